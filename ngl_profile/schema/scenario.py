"""The typed description of what to run: a scenario, its optimizer cases, and one case as it crosses
the process boundary (`CaseSpec`). Validated here and only here, for type, range and finiteness,
whichever way it arrives: a TOML file (schema/presets.py), CLI overrides, the Python API, or the
JSON a runner hands to its case process. Every error is one line naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from ngl_profile.schema.thresholds import Thresholds
from ngl_profile.zoo.gpus import get_gpu
from ngl_profile.zoo.hparams import is_int, is_number
from ngl_profile.zoo.models import get_model

__all__ = ["Scenario", "OptimizerCase", "CaseSpec", "DTYPES", "MODES", "check_name", "safe_name"]

DTYPES = ("bfloat16", "float32")
MODES = ("auto", "measured", "estimated")
# a scenario name becomes a directory and file prefix: letters, digits and . _ + - only, no "..",
# so no name can write outside the output folder
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
_LIMITS = {"seq_len": (1, 1 << 20), "batch_size": (1, 1 << 16), "steps": (1, 100_000), "warmup": (0, 10_000)}


def check_name(value, key: str = "name") -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{key} must be 1–100 letters, digits or . _ + - (it names files; no '/' or '..'); "
                         f"got {value!r}")
    return value


def safe_name(text: str) -> str:
    """`text` made safe as a file name (for names read from results files, which were not ours)."""
    out = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._") or "run"
    return out.replace("..", "_")[:100]


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key} must be {allowed}; got {value!r}")


@dataclass(kw_only=True, slots=True)
class OptimizerCase:
    name: str
    """optimizer name, as `ngl-profile list optimizers` shows"""
    label: str = ""
    """name shown in tables and charts (default: the optimizer name)"""
    hparams: dict = field(default_factory=dict)
    """everything else in the [[optimizers]] entry: rank, history_size, lr, ..."""

    def __post_init__(self) -> None:
        from ngl_profile.zoo.optimizers import OPTIMIZERS

        if not isinstance(self.name, str):
            raise ValueError(f"name must be a string (see `ngl-profile list optimizers`); got {self.name!r}")
        spec = OPTIMIZERS.get(self.name)
        if spec is None:
            raise ValueError(f"name: unknown optimizer {self.name!r}; known: {', '.join(OPTIMIZERS)}")
        _require(isinstance(self.label, str) and len(self.label) <= 120 and self.label.isprintable(),
                 "label", self.label, "a printable string of at most 120 characters")
        _require(isinstance(self.hparams, dict), "hparams", self.hparams, "a table of hyperparameters")
        spec.check_hparams(self.hparams)
        self.label = self.label or self.name

    def resolved_hparams(self, scn: "Scenario") -> dict:
        """The hyperparameters the optimizer is built with: the scenario's lr and the model's default
        rank filled in where the case sets none."""
        from ngl_profile.zoo.optimizers import OPTIMIZERS

        spec = OPTIMIZERS[self.name]
        hp = dict(self.hparams)
        if "lr" in spec.hparams:
            hp.setdefault("lr", scn.lr)
        if spec.low_rank:
            hp.setdefault("rank", get_model(scn.model).default_rank)
        return hp

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "hparams": dict(self.hparams)}


@dataclass(kw_only=True, slots=True)
class Scenario:
    name: str
    """scenario name, used in output paths"""
    model: str
    """model from the zoo (`ngl-profile list models`)"""
    seq_len: int = 256
    """tokens per sequence (the paper's pre-training setting is 256)"""
    batch_size: int = 1
    """sequences per step"""
    dtype: str = "bfloat16"
    """weights, activations and gradients: bfloat16 or float32"""
    steps: int = 6
    """timed steps after warm-up (measured mode only)"""
    warmup: int = 1
    """untimed, untracked steps between the memory-tracked steps and the timed ones"""
    gpu: str = "rtx-4090"
    """target GPU from the catalog (`ngl-profile list gpus`)"""
    checkpointing: bool = False
    """activation checkpointing"""
    mode: str = "auto"
    """auto (measured where the device allows, else estimated), measured or estimated"""
    lr: float = 1e-3
    """learning rate for optimizers that do not set their own"""
    optimizers: list[OptimizerCase] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)
    """regression limits for `ngl-profile check` when this run becomes a baseline"""
    source: str = ""
    """the file it came from"""

    def __post_init__(self) -> None:
        check_name(self.name)
        _require(isinstance(self.model, str), "model", self.model, "a model name (see `ngl-profile list models`)")
        spec = get_model(self.model)
        for key, (lo, hi) in _LIMITS.items():
            v = getattr(self, key)
            _require(is_int(v) and lo <= v <= hi, key, v, f"an integer in [{lo}, {hi}]")
        if spec.max_seq_len is not None:
            _require(self.seq_len <= spec.max_seq_len, "seq_len", self.seq_len,
                     f"at most {spec.max_seq_len} for {self.model} (its position embeddings)")
        _require(isinstance(self.dtype, str) and self.dtype in DTYPES, "dtype", self.dtype,
                 f"one of {', '.join(DTYPES)}")
        _require(isinstance(self.mode, str) and self.mode in MODES, "mode", self.mode, f"one of {', '.join(MODES)}")
        _require(isinstance(self.checkpointing, bool), "checkpointing", self.checkpointing, "true or false")
        _require(is_number(self.lr) and self.lr > 0, "lr", self.lr, "a finite number > 0")
        _require(isinstance(self.gpu, str), "gpu", self.gpu, "a GPU name in quotes (see `ngl-profile list gpus`)")
        self.gpu = get_gpu(self.gpu).name
        _require(isinstance(self.source, str), "source", self.source, "a string")
        if isinstance(self.thresholds, dict):
            self.thresholds = Thresholds.from_table(self.thresholds, "[thresholds]")
        _require(isinstance(self.thresholds, Thresholds), "thresholds", self.thresholds, "a [thresholds] table")
        _require(isinstance(self.optimizers, list) and all(isinstance(c, OptimizerCase) for c in self.optimizers),
                 "optimizers", self.optimizers, "a list of optimizer cases")
        labels = [c.label for c in self.optimizers]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"optimizers: label {dup[0]!r} appears twice; give each entry a distinct label")

    def with_overrides(self, **overrides) -> "Scenario":
        """A new, re-validated scenario; None values leave the field as it is (CLI > file)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Scenario(**values)

    def select(self, wanted: list[str]) -> "Scenario":
        """Only the optimizers named (by label or name), in the order given; a name not in the file
        runs with its defaults."""
        chosen = []
        for w in wanted:
            hits = [c for c in self.optimizers if w in (c.label, c.name)]
            if not hits:
                if any(c.name == w for c in chosen):
                    continue
                hits = [OptimizerCase(name=w)]
            chosen.extend(h for h in hits if h not in chosen)
        return self.with_overrides(optimizers=chosen)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["optimizers"] = [c.to_dict() for c in self.optimizers]
        d["thresholds"] = dataclasses.asdict(self.thresholds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scenario":
        """From `to_dict`'s form (a results file, a case spec); unknown keys are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"scenario must be an object; got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"scenario has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        for key in ("name", "model"):
            if key not in d:
                raise ValueError(f"scenario needs {key!r}")
        values = dict(d)
        cases = values.pop("optimizers", [])
        _require(isinstance(cases, list), "optimizers", cases, "a list")
        out = []
        for i, c in enumerate(cases):
            if not isinstance(c, dict) or not {"name"} <= set(c) <= {"name", "label", "hparams"}:
                raise ValueError(f"optimizers[{i}] must be an object with name, label, hparams; got {c!r}")
            try:
                out.append(OptimizerCase(**c))
            except ValueError as e:
                raise ValueError(f"optimizers[{i}]: {e}") from None
        return cls(**values, optimizers=out)


@dataclass(kw_only=True, slots=True)
class CaseSpec:
    """One case as the runner hands it to its case process (JSON on disk between the two)."""

    scenario: Scenario
    case: OptimizerCase
    mode: str
    """measured | estimated (never auto: the runner has decided)"""
    device: str
    """cpu | cuda"""
    target_bytes: int
    """the target GPU's memory"""

    def __post_init__(self) -> None:
        _require(self.mode in ("measured", "estimated"), "mode", self.mode, "measured or estimated")
        _require(self.device in ("cpu", "cuda"), "device", self.device, "cpu or cuda")
        _require(is_int(self.target_bytes) and self.target_bytes > 0, "target_bytes", self.target_bytes,
                 "an integer > 0")

    @property
    def hparams(self) -> dict:
        return self.case.resolved_hparams(self.scenario)

    def to_dict(self) -> dict:
        return {"scenario": self.scenario.to_dict(), "case": self.case.to_dict(), "mode": self.mode,
                "device": self.device, "target_bytes": self.target_bytes}

    @classmethod
    def from_dict(cls, d: dict) -> "CaseSpec":
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict) or set(d) != {"scenario", "case", "mode", "device", "target_bytes"}:
            raise ValueError("a case spec is an object with scenario, case, mode, device, target_bytes")
        case = d["case"]
        if not isinstance(case, dict) or not {"name"} <= set(case) <= {"name", "label", "hparams"}:
            raise ValueError(f"case must be an object with name, label, hparams; got {case!r}")
        return cls(scenario=Scenario.from_dict(d["scenario"]), case=OptimizerCase(**case), mode=d["mode"],
                   device=d["device"], target_bytes=d["target_bytes"])
