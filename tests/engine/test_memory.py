"""Attribution: every byte of the peak in exactly one category, each category equal to its count
by hand, and the estimator (FakeTensorMode) equal to the measurement on the CPU."""
import pytest
import torch

from ngl_profile.engine.case import run_case
from ngl_profile.schema.categories import CATEGORIES, TRACKED
from ngl_profile.zoo.models import build_model
from ngl_profile.zoo.optimizers import low_rank_parameters
from ngl_profile.optim.projector import clamp_rank, projected_shape, resolve_side

from tests.helpers import case_spec

F32 = 4


def tiny_counts():
    model = build_model("tiny")
    params = list(model.parameters())
    mats, _ = low_rank_parameters(model)
    return model, params, mats


def low_rank_elements(mats, rank):
    out = []
    for p in mats:
        side = resolve_side(p.shape, "std")
        ranks = clamp_rank(tuple(p.shape), rank, side)
        shape = projected_shape(tuple(p.shape), ranks, side)
        proj = ranks[0] * (p.shape[0] if side == "left" else p.shape[1])
        out.append((torch.Size(shape).numel(), proj))
    return out


def test_categories_sum_to_peak_and_match_hand_counts():
    model, params, mats = tiny_counts()
    s, rank = 3, 8
    r = run_case(case_spec("natural-galore", rank=rank, history_size=s))
    assert r.status == "ok", r.message
    m = r.memory_bytes
    assert sum(m.values()) == r.peak_bytes
    assert m["allocator_slack"] == 0 and m["context"] == 0  # CUDA only
    weights = sum(p.numel() for p in params) * F32 + sum(b.numel() * b.element_size() for b in model.buffers())
    assert m["weights"] == weights
    lr = low_rank_elements(mats, rank)
    assert m["projectors"] == sum(proj for _, proj in lr) * F32
    # history: s columns of k float32 per matrix + its s×s float64 Gram matrix + an int64 counter
    assert m["history"] == sum(s * k * F32 + s * s * 8 + 8 for k, _ in lr)
    # Adam moments: 2 × projected size for matrices, 2 × full size for the rest
    rest = sum(p.numel() for p in params) - sum(p.numel() for p in mats)
    assert m["moments"] == 2 * F32 * (sum(k for k, _ in lr) + rest)


def test_adamw_moments_and_grads():
    _, params, _ = tiny_counts()
    r = run_case(case_spec("adamw"))
    n = sum(p.numel() for p in params)
    # torch AdamW: exp_avg + exp_avg_sq per parameter, plus a 0-d float32 step tensor each
    assert r.memory_bytes["moments"] == 2 * n * F32 + len(params) * F32
    assert sum(r.memory_bytes.values()) == r.peak_bytes
    assert r.step_peaks_bytes and max(r.step_peaks_bytes) == r.peak_bytes


def test_int8_history_and_8bit_quant_stats_by_count():
    _, params, mats = tiny_counts()
    s, rank = 2, 8
    r = run_case(case_spec("natural-galore-8bit", rank=rank, history_size=s, history_dtype="int8"))
    lr = low_rank_elements(mats, rank)
    assert r.memory_bytes["history"] == sum(s * k + s * F32 + s * s * 8 + 8 for k, _ in lr)
    assert r.memory_bytes["quant_stats"] > 0


def test_layerwise_holds_at_most_one_gradient():
    _, params, _ = tiny_counts()
    r = run_case(case_spec("natural-galore-layerwise", rank=8, history_size=2))
    assert r.status == "ok", r.message
    assert r.memory_bytes["grads"] <= max(p.numel() for p in params) * F32


@pytest.mark.parametrize("name,hp", [("adamw", {}), ("natural-galore-8bit-layerwise",
                                                    {"rank": 8, "history_size": 2, "history_dtype": "int8"}),
                                     ("lora", {"rank": 4}), ("adafactor", {})])
def test_estimated_equals_measured_on_cpu(name, hp):
    measured = run_case(case_spec(name, mode="measured", **hp))
    estimated = run_case(case_spec(name, mode="estimated", **hp))
    assert measured.status == estimated.status == "ok", (measured.message, estimated.message)
    assert measured.provenance == "measured" and estimated.provenance == "estimated"
    for cat in TRACKED:
        a, b = measured.memory_bytes[cat], estimated.memory_bytes[cat]
        assert abs(a - b) <= 0.03 * max(a, b, 1), (cat, a, b)
    assert estimated.tokens_per_s is None and measured.tokens_per_s > 0
    assert estimated.projected and "upper bound" in estimated.projected["assumptions"]


def test_checkpointing_saves_activations():
    plain = run_case(case_spec("adamw", mode="estimated"))
    from tests.helpers import scenario_dict
    ckpt = run_case(case_spec("adamw", mode="estimated", scenario=scenario_dict(checkpointing=True)))
    assert ckpt.status == "ok", ckpt.message
    assert ckpt.memory_bytes["weights"] == plain.memory_bytes["weights"]
    assert all(c in ckpt.memory_bytes for c in CATEGORIES)


def test_svd_refresh_is_timed_for_low_rank_optimizers_only():
    r = run_case(case_spec("galore-8bit-layerwise", rank=8, update_proj_gap=50))
    assert r.step_time_s["svd_refresh"] > 0
    assert r.step_time_s["svd_refresh_amortized"] == pytest.approx(r.step_time_s["svd_refresh"] / 50)
    assert "svd_refresh" not in run_case(case_spec("adamw")).step_time_s


def test_cuda_accounting_slack_and_context(monkeypatch):
    """The CUDA branch's arithmetic, without a GPU: slack = reserved − tracked peak, context from
    NVML, all of it in the peak, and fit judged with no assumed context (the real one is counted)."""
    from ngl_profile.engine import case as case_mod
    from ngl_profile.zoo.gpus import get_gpu
    from ngl_profile.measure.memory import MemorySnapshot
    from ngl_profile.schema.results import CaseResult

    GiB = 1 << 30
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 20 * GiB)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 19 * GiB)
    by_cat = dict.fromkeys(CATEGORIES, 0)
    by_cat.update(weights=12 * GiB, moments=6 * GiB)
    snap = MemorySnapshot(peak_bytes=18 * GiB, by_category=by_cat, peak_phase="optimizer")
    r = CaseResult(optimizer={"name": "x", "label": "x"}, status="ok", provenance="measured")
    case_mod._record_memory(r, snap, get_gpu("4090"), True, GiB // 2, "cuda")
    assert r.memory_bytes["allocator_slack"] == 2 * GiB and r.memory_bytes["context"] == GiB // 2
    assert r.peak_bytes == sum(r.memory_bytes.values()) == 20 * GiB + GiB // 2
    assert r.fits and r.headroom_bytes == 24 * GiB - r.peak_bytes  # no 512 MiB assumption on top


def test_svd_refresh_timing_uses_the_groups_svd_method(monkeypatch):
    import ngl_profile.optim.projector as projector

    methods = []
    real = projector.compute_basis

    def spy(grad, ranks, side, method="full", seed=0):
        methods.append(method)
        return real(grad, ranks, side, method, seed)

    monkeypatch.setattr(projector, "compute_basis", spy)
    run_case(case_spec("galore", rank=8, svd="lowrank"))
    assert methods and set(methods) == {"lowrank"}
