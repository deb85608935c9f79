"""Property-based fuzz of the scenario schema (hypothesis, derandomized so the suite is deterministic).

Whatever a TOML file holds, `load_scenario` either returns a Scenario whose every field is in range,
which survives the trip through the case spec's JSON unchanged, or raises a one-line ValueError.
Nothing else: no TypeError, no KeyError, no traceback for the user."""
from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ngl_profile.schema.presets import load_scenario
from ngl_profile.schema.scenario import CaseSpec, Scenario
from ngl_profile.zoo.optimizers import OPTIMIZERS

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(st.characters(exclude_categories=["Cs"]), max_size=12),  # TOML is UTF-8
    st.sampled_from(["tiny", "llama-60m", "roberta-base", "rtx-4090", "4090", "h100", "bfloat16", "float32",
                     "auto", "measured", "estimated", "std", "tucker", "int8", "keep", "../x", "a/b", ""]),
    st.sampled_from([0, 1, 2, 16, 512, 513, 1 << 20, -1, 0.5, 1e-3, 0.9, 0.999, 1.0]))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from(["a", "b"]), scalars,
                                                                         max_size=2))
SCENARIO_KEYS = ["name", "model", "seq_len", "batch_size", "dtype", "steps", "warmup", "gpu", "checkpointing", "mode",
                 "lr", "precision", "attention", "code_paths", "colour"]  # colour: an unknown key (the corpus in tests/test_bad_input.py has more)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_table(header: str, d: dict) -> str:
    return header + "\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in d.items())


EDGES = [math.inf, -math.inf, math.nan, 0, 0.0, -1, -1.0, 1, 1.0, 2.0, 1e300, True, False, 2**40, "1", ""]
unit = st.floats(0.0, 0.999)
positive = st.floats(1e-6, 10.0)
VALID = {  # values the schema must accept, per key
    "seq_len": st.integers(1, 512), "batch_size": st.integers(1, 4), "dtype": st.sampled_from(["bfloat16", "float32"]),
    "steps": st.integers(1, 5), "warmup": st.integers(0, 3), "gpu": st.sampled_from(["4090", "h100", "a100", "t4"]),
    "checkpointing": st.booleans(), "mode": st.sampled_from(["auto", "measured", "estimated"]), "lr": positive,
    "eps": st.floats(1e-12, 0.1), "weight_decay": unit, "beta1": unit, "scale": positive, "damping": positive,
    "lora_alpha": positive, "lora_dropout": unit, "betas": st.lists(unit, min_size=2, max_size=2),
    "rank": st.integers(1, 64), "update_proj_gap": st.integers(1, 300), "history_size": st.integers(0, 12),
    "accumulation_steps": st.integers(1, 4), "compile": st.booleans(),
    "proj_type": st.sampled_from(["std", "left", "right"]), "svd": st.sampled_from(["full", "lowrank"]),
    "history_dtype": st.sampled_from(["float32", "bfloat16", "int8"]),
    "on_subspace_change": st.sampled_from(["keep", "reset", "rotate"]), "label": st.sampled_from(["", "a b", "é"]),
    "implementation": st.sampled_from(["for-loop", "foreach", "fused"]),
    "precision": st.sampled_from(["bf16", "fp32", "mixed-bf16", "bf16-fp32-state"]),
    "attention": st.sampled_from(["sdpa", "eager"]), "code_paths": st.sampled_from(["gpu", "cpu"]),
}
# what goes into the one key under test: its edges, valid values, or anything at all
suspect = st.one_of(st.sampled_from(EDGES), values, st.lists(st.sampled_from(EDGES), min_size=1, max_size=3),
                    st.lists(st.one_of(unit, st.sampled_from(EDGES)), min_size=2, max_size=2))  # betas-shaped


@st.composite
def scenario_file(draw) -> tuple[dict, list[dict]]:
    """A valid scenario with exactly one key set to a suspect value: each example tests one check, so
    a range check that lets a bad value through is found (an all-random file would fail earlier)."""
    head = {"name": draw(st.sampled_from(["fz", "a.b", "x-1"])), "model": draw(st.sampled_from(["tiny", "roberta-base"]))}
    for key in draw(st.lists(st.sampled_from(sorted(SCENARIO_KEYS[2:-1])), unique=True, max_size=4)):
        head[key] = draw(VALID[key])
    if head["model"] == "roberta-base":
        head.pop("seq_len", None)
    cases = []
    for i, name in enumerate(draw(st.lists(st.sampled_from(sorted(OPTIMIZERS)), min_size=1, max_size=3))):
        case = {"name": name, "label": f"case{i}"}
        for key in draw(st.lists(st.sampled_from(OPTIMIZERS[name].hparams), unique=True, max_size=4)):
            case[key] = draw(VALID[key])
        cases.append(case)
    where = draw(st.integers(-1, len(cases) - 1))  # -1: the [scenario] table
    table = head if where < 0 else cases[where]
    keys = SCENARIO_KEYS if where < 0 else ["name"] + list(OPTIMIZERS[cases[where]["name"]].hparams)
    table[draw(st.sampled_from(keys))] = draw(st.one_of(suspect, suspect, st.sampled_from([None])).filter(
        lambda v: v is not None))
    return head, cases


POSITIVE = ("lr", "eps", "scale", "damping", "lora_alpha")
UNIT = ("weight_decay", "lora_dropout", "beta1")
COUNTS = {"rank": 1, "update_proj_gap": 1, "history_size": 0, "accumulation_steps": 1}
CHOICES = {"proj_type": ("std", "left", "right", "tucker"), "svd": ("full", "lowrank"),
           "implementation": ("for-loop", "foreach", "fused"),
           "history_dtype": ("float32", "bfloat16", "int8"), "on_subspace_change": ("keep", "reset", "rotate")}


def check_in_range(s: Scenario) -> None:
    assert isinstance(s.name, str) and "/" not in s.name and ".." not in s.name
    for key in ("seq_len", "batch_size", "steps", "warmup"):
        v = getattr(s, key)
        assert isinstance(v, int) and not isinstance(v, bool)
    assert s.seq_len >= 1 and s.batch_size >= 1 and s.steps >= 1 and s.warmup >= 0
    # the recipe and the parameter dtype always agree, however they were given
    assert (s.precision, s.dtype) in {("bf16", "bfloat16"), ("fp32", "float32"), ("mixed-bf16", "float32"),
                                      ("bf16-fp32-state", "bfloat16")}
    assert s.attention in ("sdpa", "eager", "flash_attention_2") and s.code_paths in ("gpu", "cpu")
    assert isinstance(s.lr, (int, float)) and not isinstance(s.lr, bool) and math.isfinite(s.lr) and s.lr > 0
    for c in s.optimizers:  # the invariants, written out again here (not the schema's own checks)
        for key, value in c.hparams.items():
            assert key in OPTIMIZERS[c.name].hparams
            if key in POSITIVE or key in UNIT:
                assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                assert value > 0 if key in POSITIVE else 0 <= value < 1, (key, value)
            elif key in COUNTS:
                assert isinstance(value, int) and not isinstance(value, bool) and value >= COUNTS[key], (key, value)
            elif key == "betas":
                assert len(value) == 2, value
                for b in value:
                    assert isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1, value
            elif key == "compile":
                assert isinstance(value, bool)
            else:
                assert value in CHOICES[key], (key, value)


@FUZZ
@given(scenario_file())
def test_any_scenario_file_loads_in_range_or_fails_in_one_line(tmp_path_factory, drawn):
    head, cases = drawn
    text = toml_table("[scenario]", head) + "".join(toml_table("[[optimizers]]", c) for c in cases)
    path = tmp_path_factory.mktemp("fz") / "s.toml"
    path.write_text(text)
    try:
        s = load_scenario(str(path))
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
        return
    event("loaded")  # `pytest --hypothesis-show-statistics` shows how often a file was valid
    check_in_range(s)
    for c in s.optimizers:  # what the runner writes for the case process reads back identically
        spec = CaseSpec(scenario=s, case=c, mode="estimated", device="cpu", target_bytes=1 << 30)
        back = CaseSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert back.to_dict() == spec.to_dict()


@FUZZ
@given(d=st.dictionaries(st.sampled_from(SCENARIO_KEYS + ["optimizers", "thresholds", "source"]), values,
                         max_size=6))
def test_scenario_from_any_dict_is_valid_or_one_line(d):
    """The same one place validates the Python API and results files' scenario objects."""
    try:
        s = Scenario.from_dict(d)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
        return
    check_in_range(s)
