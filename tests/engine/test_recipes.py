"""Precision recipes, attention implementations, checkpointing and the GPU code paths, each checked
against an independent count: torch's own MemTracker (torch.distributed._tools.mem_tracker) run
over the same step under FakeTensorMode, per category group, and hand counts of what each recipe
holds per parameter."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from ngl_profile.engine.case import _unpacked_batches, run_case
from ngl_profile.engine.steps import one_step
from ngl_profile.schema.scenario import Scenario
from ngl_profile.zoo.models import build_model
from ngl_profile.zoo.optimizers import build, code_path

from tests.helpers import case_spec, scenario_dict

RECIPES = ("bf16", "fp32", "mixed-bf16", "bf16-fp32-state")


def _scenario(**over) -> dict:
    return scenario_dict(**{"model": "tiny", "seq_len": 64, "batch_size": 2, "dtype": "", **over})


def _estimate(name, scn: dict, **hp):
    r = run_case(case_spec(name, mode="estimated", scenario=scn, **hp))
    assert r.status == "ok", r.message
    return r


def _torch_memtracker(name, scn: dict, **hp) -> dict:
    """Peak bytes by torch MemTracker's reference types over the same two steps, the same model
    and optimizer (built for the CUDA code path, as an estimate is), under FakeTensorMode."""
    s = Scenario(**scn)
    with _unpacked_batches(), FakeTensorMode(allow_non_fake_inputs=True):
        model = build_model(s.model, getattr(torch, s.dtype), s.checkpointing, device="cpu",
                            attention="eager" if s.attention == "eager" else "sdpa")
        opt = build(name, model, target="cuda", precision=s.precision, **hp)
        mt = MemTracker()
        mt.track_external(model, opt)
        with mt:
            for _ in range(2):
                one_step(model, opt, s, torch.device("cpu"), None)
                mt.reset_mod_stats()  # its per-module stats allow one iteration; the peak is kept
        peak = mt.get_tracker_snapshot("peak")
    (by_type,) = peak.values()
    return {str(k).split(".")[-1].lower(): v for k, v in by_type.items()}


def _grouped(ours: dict) -> dict:
    state = sum(ours[c] for c in ("moments", "quant_stats", "projectors", "history"))
    return {"weights": ours["weights"], "grads": ours["grads"], "state": state,
            "state+act+temp": state + ours["activations"] + ours["temporaries"]}


def _theirs(mt: dict) -> dict:
    # MemTracker files everything created inside optimizer.step() as OPT, a step's transients (foreach
    # AdamW's √v) included; we call those temporaries. So the optimizer state is compared as "at most
    # OPT", and state + activations + temporaries as one group.
    return {"weights": mt.get("param", 0) + mt.get("buffer", 0), "grads": mt.get("grad", 0),
            "state": mt.get("opt", 0),
            "state+act+temp": sum(mt.get(k, 0) for k in ("opt", "act", "temp", "oth"))}


# every recipe × attention (+ checkpointing), less fp32 with flash attention, which the scenario refuses
# (flash kernels need bf16 compute: tests/schema/test_scenario.py)
_SETUPS = [(r, a, c) for r in RECIPES
           for a, c in (("sdpa", False), ("eager", False), ("sdpa", True), ("flash_attention_2", False))
           if not (r == "fp32" and a == "flash_attention_2")]


@pytest.mark.parametrize("recipe,attention,checkpointing", _SETUPS)
@pytest.mark.parametrize("name,hp", [("adamw", {}), ("natural-galore", {"rank": 8, "history_size": 3})])
def test_estimate_matches_torch_memtracker(recipe, attention, checkpointing, name, hp):
    scn = _scenario(precision=recipe, attention=attention, checkpointing=checkpointing)
    ours = _estimate(name, scn, **hp)
    tracked = ours.peak_bytes - ours.memory_bytes["allocator_slack"] - ours.memory_bytes["context"]
    theirs = _torch_memtracker(name, scn, **hp)
    assert abs(tracked - theirs["total"]) <= 0.01 * theirs["total"], (tracked, theirs)
    mine, ref = _grouped(ours.memory_bytes), _theirs(theirs)
    tol = 0.01 * theirs["total"]
    for group in ("weights", "grads", "state+act+temp"):
        assert abs(mine[group] - ref[group]) <= tol, (group, mine, ref)
    assert mine["state"] <= ref["state"] + tol, (mine, ref)


def _counts(scn: dict) -> tuple[int, int, int]:
    """(parameter elements, parameter tensors, buffer bytes) of the scenario's model."""
    s = Scenario(**scn)
    with FakeTensorMode():
        model = build_model(s.model, getattr(torch, s.dtype))
        params = list(model.parameters())
        return (sum(p.numel() for p in params), len(params),
                sum(b.numel() * b.element_size() for b in model.buffers()))


def _params(scn: dict) -> int:
    return _counts(scn)[0]


@pytest.mark.parametrize("recipe,weight_bytes,moment_bytes", [("bf16", 2, 4), ("fp32", 4, 8),
                                                              ("mixed-bf16", 4, 8), ("bf16-fp32-state", 2, 8)])
def test_adamw_bytes_per_parameter_by_recipe(recipe, weight_bytes, moment_bytes):
    """AdamW keeps weights (2 or 4 bytes a parameter) and two moments (2 × 2 or 2 × 4) whatever the
    attention; the recipe decides which."""
    scn = _scenario(precision=recipe)
    n, tensors, buffers = _counts(scn)
    r = _estimate("adamw", scn)
    assert r.memory_bytes["weights"] == n * weight_bytes + buffers  # buffers: the rotary frequencies
    # torch AdamW's step counter is a float32 scalar tensor per parameter; AdamWFp32State's a Python int
    steps = 0 if recipe == "bf16-fp32-state" else 4 * tensors
    assert r.memory_bytes["moments"] == n * moment_bytes + steps


def test_mixed_precision_forward_holds_bf16_copies_of_the_weights():
    """Under mixed-bf16 a linear layer's float32 weight is cast to bf16 for the matmul and the cast
    is saved for backward: with the bf16 input cast and the bf16 output, the forward leaves
    2·(h·h + b·h + b·h) bytes alive (hand count), where fp32 leaves only its b·h·4-byte output."""
    from ngl_profile.engine.steps import compute_context
    from ngl_profile.measure.memory import MemoryTracker

    h, b = 256, 4
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(h, h, bias=False)
    x = torch.randn(b, h, generator=gen, requires_grad=True)
    live = {}
    for recipe in ("mixed-bf16", "fp32"):
        tracker = MemoryTracker()
        tracker.attach(lin)
        scn = Scenario(**_scenario(precision=recipe))
        with tracker, tracker.phase("forward"), compute_context(scn, "cpu"):
            y = lin(x)
        live[recipe] = tracker.current()["activations"]
        assert y.dtype == (torch.bfloat16 if recipe == "mixed-bf16" else torch.float32)
        del y
        tracker.detach()
    assert live["mixed-bf16"] == 2 * (h * h + b * h + b * h)
    assert live["fp32"] == 4 * b * h


def test_eager_attention_keeps_the_score_matrices():
    """eager attention saves, per layer, the b·heads·s² scores' softmax (and its dropout input) that
    SDPA's fused kernels never materialise: at s = 512 the difference dwarfs everything else."""
    seq, b, heads, layers = 512, 2, 4, 2
    sd = _estimate("adamw", scenario_dict(model="tiny", seq_len=seq, batch_size=b, dtype="", precision="bf16"))
    ea = _estimate("adamw", scenario_dict(model="tiny", seq_len=seq, batch_size=b, dtype="", precision="bf16",
                                          attention="eager"))
    scores = b * heads * seq * seq * layers
    extra = ea.memory_bytes["activations"] - sd.memory_bytes["activations"]
    # HF eager: fp32 softmax then cast to bf16 (kept: 2 bytes) and the bf16 scores (2 bytes) at least
    assert extra >= 2 * scores, (extra, scores)
    assert extra <= 8 * scores, (extra, scores)


def test_foreach_adamw_holds_every_parameters_root_at_once():
    """torch AdamW's CUDA default (foreach) computes √v for every parameter at once: n float32
    temporaries at the step's peak. torch's for-loop holds two of one parameter's (√v, then √v/c
    before the first is freed) and the previous parameter's denominator, which its loop variable
    keeps until reassigned: max over i of 2·nᵢ + nᵢ₋₁. An estimate models the target GPU's path unless
    told code_paths = cpu."""
    small = dict(precision="fp32", batch_size=1, seq_len=8)
    s = Scenario(**_scenario(**small))
    with FakeTensorMode():
        sizes = [p.numel() for p in build_model(s.model, torch.float32).parameters()]
    gpu = _estimate("adamw", _scenario(**small))
    cpu = _estimate("adamw", _scenario(**small, code_paths="cpu"))
    assert gpu.peak_phase == cpu.peak_phase == "optimizer"
    assert gpu.memory_bytes["temporaries"] == 4 * sum(sizes)
    assert cpu.memory_bytes["temporaries"] == 4 * max(2 * n + prev for n, prev in zip(sizes, [0] + sizes))
    assert "foreach" in gpu.code_path and "for-loop" in cpu.code_path


def test_code_path_names_what_was_modelled():
    assert code_path("adamw", {}, "cuda") == "torch AdamW, foreach (torch's default on CUDA)"
    assert code_path("adamw", {"implementation": "fused"}, "cuda") == "torch AdamW, fused"
    assert "float32 moments" in code_path("natural-galore", {}, "cuda", "bf16-fp32-state", estimated=True)
    assert "8-bit" in code_path("adamw8bit", {}, "cuda")
