"""Estimated DDP/FSDP2 ranks (one process, torch's fake process group, FakeTensorMode) checked
against hand counts of FSDP2's sharding and DDP's buckets, and against torch's FSDPMemTracker."""
import functools
import math

import pytest
import torch

from ngl_profile.engine.case import run_case
from tests.helpers import case_spec, scenario_dict

pytest.importorskip("torch.distributed.fsdp")

N = 3  # 64 and 172 rows do not split in 3: FSDP2 pads the last ranks' shards
# seq 8 × batch 1: tiny activations; the peak falls in backward, as a layer's gradients are reduced
SHAPE = dict(seq_len=8, batch_size=1, code_paths="cpu")


def _shapes():
    from ngl_profile.zoo.models import build_model

    with torch.device("meta"):
        model = build_model("tiny", torch.float32, device="meta")
    return [tuple(p.shape) for p in model.parameters()], [tuple(b.shape) for b in model.buffers()]


@functools.lru_cache(maxsize=None)  # each estimate once per file: several tests read the same one
def _estimate(parallelism, world_size=N, name="adamw"):
    scn = scenario_dict(parallelism=parallelism, world_size=world_size, **SHAPE)
    r = run_case(case_spec(name, mode="estimated", scenario=scn))
    assert r.status == "ok", r.message
    return r


def _shard_rows(d0: int, world: int, rank: int) -> int:
    """Rows of dim 0 on `rank`: torch.chunk's split (ceil-sized chunks, the last ones short or empty)."""
    chunk = math.ceil(d0 / world)
    return max(0, min(chunk, d0 - rank * chunk))


def test_fsdp2_shards_are_one_nth_as_fsdp2_pads():
    params, buffers = _shapes()
    r = _estimate("fsdp2")
    roles = r.distributed["roles_at_peak_bytes"]
    f32 = 4
    # every rank's sharded parameter storage is padded to the first chunk's rows (FSDP2's padded shard)
    padded = sum(math.ceil(s[0] / N) * math.prod(s[1:]) * f32 for s in params)
    buffer_bytes = sum(math.prod(s) * f32 for s in buffers)
    gathered = roles["unsharded_weights"] + roles["all_gather_buffer"]
    assert r.memory_bytes["weights"] - gathered == padded + buffer_bytes
    # AdamW's moments are zeros_like(the sharded DTensor): rank 0's unpadded local rows, two per
    # parameter, plus a float32 step count each
    local0 = sum(_shard_rows(s[0], N, 0) * math.prod(s[1:]) * f32 for s in params)
    assert r.memory_bytes["moments"] == 2 * local0 + f32 * len(params)
    # at the peak in backward: the sharded gradients reduced so far (padded reduce-scatter outputs)
    # beside the layer still being reduced
    assert r.peak_phase == "backward"
    reduced = roles["unsharded_grads"] + roles["reduce_scatter_buffer"]
    assert reduced > 0 and 0 < r.memory_bytes["grads"] - reduced <= padded
    unsharded = _estimate("none", world_size=1)
    full = sum(math.prod(s) * f32 for s in params)
    assert unsharded.memory_bytes["moments"] == 2 * full + f32 * len(params)
    assert padded >= full / N and padded - full / N < f32 * sum(math.prod(s[1:]) for s in params)


def test_rank_zero_is_the_worst_rank():
    """The last rank holds the short chunks: smaller moments, the same padded parameters."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    params, _ = _shapes()
    first = _estimate("fsdp2")
    dist.init_process_group("fake", store=FakeStore(), rank=N - 1, world_size=N)
    try:
        # setup() joins the group already there: this process plays rank N-1
        last = _estimate.__wrapped__("fsdp2")
    finally:
        dist.destroy_process_group()
    assert last.distributed["rank"] == N - 1
    local_last = sum(_shard_rows(s[0], N, N - 1) * math.prod(s[1:]) * 4 for s in params)
    assert last.memory_bytes["moments"] == 2 * local_last + 4 * len(params)
    def own(r):  # this rank's parameter shards, without what was gathered from the others
        roles = r.distributed["roles_at_peak_bytes"]
        return r.memory_bytes["weights"] - roles["unsharded_weights"] - roles["all_gather_buffer"]

    assert own(last) == own(first)
    assert last.cuda["tracked_peak_bytes"] < first.cuda["tracked_peak_bytes"]


def test_fsdp2_agrees_with_torch_fsdp_mem_tracker():
    """The same program under torch's FSDPMemTracker: the same peak, byte for byte, and the same
    bytes in each of its buckets as in ours."""
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    from ngl_profile.engine.case import _unpacked_batches
    from ngl_profile.engine.distributed import local_storages, setup
    from ngl_profile.schema.scenario import Scenario
    from ngl_profile.zoo.models import build_model, make_batch

    ours = _estimate("fsdp2")
    params, _ = _shapes()
    padded = sum(math.ceil(s[0] / N) * math.prod(s[1:]) * 4 for s in params)
    scn = Scenario(**scenario_dict(**SHAPE))
    ctx = setup("fsdp2", N, estimated=True)
    try:
        with _unpacked_batches(), FakeTensorMode(allow_non_fake_inputs=True):
            model = ctx.wrap(build_model(scn.model_spec, torch.float32))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)  # ours on the CPU path
            fmt = FSDPMemTracker(model, opt)
            with fmt:
                for i in range(2):
                    model(**make_batch(scn.model_spec, 1, 8, device="cpu")).loss.backward()
                    # each rank's gradients after backward: views of one reduce-scatter output per
                    # group, padded shards
                    held = {id(s): s.nbytes() for p in model.parameters() for s in local_storages(p.grad)}
                    assert sum(held.values()) == padded
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    if i == 0:
                        fmt.reset_mod_stats()
            peak = {str(getattr(k, "name", k)): v for d in fmt.get_tracker_snapshot("peak").values() for k, v in d.items()}
    finally:
        dist.destroy_process_group()
    roles = ours.distributed["roles_at_peak_bytes"]
    assert peak["Total"] == ours.cuda["tracked_peak_bytes"]
    assert peak["OPT"] == ours.memory_bytes["moments"]
    assert peak["SHARDED_PARAM"] + peak["BUFFER"] + peak["UNSHARDED_PARAM"] + peak["ALL_GATHER"] == \
        ours.memory_bytes["weights"]
    assert peak["UNSHARDED_PARAM"] == roles["unsharded_weights"] and peak["ALL_GATHER"] == roles["all_gather_buffer"]
    # FSDPMemTracker counts the unsharded gradients FSDP2 is about to reduce as temporaries
    assert peak["SHARDED_GRAD"] + peak["UNSHARDED_GRAD"] + peak["REDUCE_SCATTER"] + roles["unsharded_grads"] == \
        ours.memory_bytes["grads"]


def test_ddp_holds_one_gradient_in_buckets():
    params, _ = _shapes()
    grads = sum(math.prod(s) * 4 for s in params)
    r = _estimate("ddp", world_size=64)
    one = _estimate("none", world_size=1)
    assert r.distributed["roles_at_peak_bytes"]["grad_buckets"] == grads
    # gradient_as_bucket_view=False (DDP's default): the gradients beside their buckets
    assert r.memory_bytes["grads"] == one.memory_bytes["grads"] + grads
    assert r.memory_bytes["moments"] == one.memory_bytes["moments"]  # DDP replicates: nothing 1/N
    assert r.cuda["tracked_peak_bytes"] == one.cuda["tracked_peak_bytes"] + grads


def test_an_optimizer_that_cannot_step_dtensors_is_a_case_error():
    """A case that fails on DTensor parameters is recorded as that case's error, with the breakdown
    at the failure, not a crash of the run; a new optimizer that handles them just runs."""
    scn = scenario_dict(parallelism="fsdp2", world_size=N, **SHAPE)
    r = run_case(case_spec("adamw", mode="estimated", scenario=scn))
    assert r.status == "ok"
    import ngl_profile.engine.case as case_mod

    original = case_mod.one_step

    def failing(model, opt, *a, **k):
        raise RuntimeError("aten.copy_.default got mixed torch.Tensor and DTensor")

    case_mod.one_step = failing
    try:
        bad = run_case(case_spec("adamw", mode="estimated", scenario=scn))
    finally:
        case_mod.one_step = original
    assert bad.status == "error" and bad.message.startswith("failed under fsdp2: RuntimeError: aten.copy_")
    assert bad.memory_bytes["weights"] > 0
    import torch.distributed as dist

    assert not dist.is_initialized()  # the fake group ended with the case
