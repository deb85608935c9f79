"""Natural GaLore on FSDP2-sharded parameters == the single-process step (optim/sharded.py).

One spawn of 2 gloo ranks runs every configuration (tests/optim/sharded_worker.py): GaLore and
Natural GaLore, proj_type std/left/right over a tall and a wide matrix with uneven shards, every
history dtype, 8-bit moments, Adafactor, the rotate policy, fp32 and bf16 weights; 5 steps with
refreshes at 0, 2, 4.
Each rank also steps full unsharded copies from the same gradients (the reference) and compares
its rows. Most of the file's time is the two children importing torch.distributed and
bitsandbytes; the 16 configurations take ~2 s together.
"""
import json

import pytest
import torch
import torch.distributed as dist

from ngl_profile.optim import sharded
from tests.optim import sharded_worker

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

# float32 rounding, relative to the largest accumulated update: the two runs sum the same
# products in another order (Σ_i P_iᵀ∇_i, per-rank partial Gram dots), measured ≤ 6e-7
TOL = 4e-6
# a bfloat16 window stores g rounded to 8 bits: a last-bit difference in g can round one
# stored entry the other way (2⁻⁸ of it), as a bf16 window's own rounding would; measured 1.3e-5
TOL_BF16 = 1e-4
# bf16 weights: every step rounds them to 8 bits, so a last-bit difference in an update can leave a
# weight one bf16 step (2⁻⁸..2⁻⁷ of it) apart; measured ≤ 1.04 steps of the largest weight. Bound:
# 2⁻⁶·max|w| (2 steps); a wrong layout is off by the size of the update (~40× that here)
TOL_BF16_WEIGHTS = 2.0**-6


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import torch.multiprocessing as mp

    d = tmp_path_factory.mktemp("sharded")
    out = str(d / "out.json")
    mp.spawn(sharded_worker.run, args=(2, str(d / "init"), out), nprocs=2)
    with open(out) as f:
        return json.load(f)


@pytest.mark.parametrize("name", list(sharded_worker.CONFIGS))
def test_sharded_step_equals_single_process(results, name):
    r = results[name]
    assert r["max_update"] > 1e-3  # the steps did move the weights
    if "bf16-weights" in name:
        assert r["max_abs_err"] <= TOL_BF16_WEIGHTS * r["max_weight"], r
    else:
        assert r["max_abs_err"] <= (TOL_BF16 if "bfloat16" in name else TOL) * r["max_update"], r
    # window and moments are sharded: the ranks' chunks add up to the single-process tensors
    # (every rank also holds a reference, hence ×world), and each rank holds less than all
    assert r["state_local_sum"] * 2 == r["state_whole_x_world"], r
    assert 0 < r["state_local"] < r["state_whole"], r


def test_unsupported_layout_is_refused_on_every_rank(results):
    assert "tucker" in results["refused"] and "not supported" in results["refused"]


@pytest.mark.parametrize("rows,world", [(10, 4), (7, 2), (3, 4), (0, 3), (256, 8)])
def test_rows_split_is_torch_chunk(rows, world):
    # the layout FSDP2 and DTensor's Shard(0) use: torch.chunk, trailing ranks shorter or empty
    chunks = torch.arange(rows).chunk(world) if rows else ()
    for rank in range(world):
        r = sharded.Rows.split(None, rank, world, (rows, 3))
        want = chunks[rank].tolist() if rank < len(chunks) else []
        assert list(range(r.lo, r.hi)) == want
        assert r.chunk * world >= rows and (r.chunk - 1) * world < max(rows, 1)


def test_plain_tensors_have_no_shard():
    t = torch.zeros(4, 3)
    assert sharded.context(t) is None and sharded.shape(t) == (4, 3) and sharded.numel(t) == 12
    assert sharded.follow(t, t, None, None) is t
