"""Scenarios: TOML files that name a model, a target GPU and the optimizers to compare.

    [scenario]
    name = "llama-7b"
    model = "llama-7b"
    seq_len = 256
    [[optimizers]]
    name = "natural-galore-8bit-layerwise"
    label = "natural-galore (fits 24 GB)"   # optional; needed when a name appears twice
    rank = 1024

Precedence: CLI options > the file > the defaults below. Every error names the file, the key and
what is allowed.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ngl_profile.zoo.gpus import get_gpu
from ngl_profile.zoo.models import get_model
from ngl_profile.optim.optimizer import LOW_RANK_DEFAULTS, _validate_low_rank

__all__ = ["Scenario", "OptimizerCase", "ScenarioError", "load_scenario", "resolve_preset",
           "scenario_dir", "preset_names", "DTYPES", "MODES"]

DTYPES = ("bfloat16", "float32")
MODES = ("auto", "measured", "estimated")


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message is one line for the user."""


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

        spec = OPTIMIZERS.get(self.name)
        if spec is None:
            raise ValueError(f"name: unknown optimizer {self.name!r}; known: {', '.join(OPTIMIZERS)}")
        spec.check_hparams(self.hparams, also=("name", "label"))
        self.label = self.label or self.name
        low_rank = {k: v for k, v in self.hparams.items() if k in LOW_RANK_DEFAULTS or k == "rank"}
        if low_rank and spec.low_rank:
            _validate_low_rank({**LOW_RANK_DEFAULTS, "rank": 1, **low_rank})  # raises with the key named
        for key in ("lr", "weight_decay"):
            v = self.hparams.get(key, 0.0)
            _require(isinstance(v, (int, float)) and v >= 0, key, v, "a number ≥ 0")
        v = self.hparams.get("compile", True)
        _require(isinstance(v, bool), "compile", v, "true or false")


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
    thresholds: dict = field(default_factory=dict)
    """regression thresholds for `ngl-profile check` (see regress.py)"""
    source: str = ""
    """the file it came from"""

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and self.name, "name", self.name, "a non-empty string")
        get_model(self.model)
        for key in ("seq_len", "batch_size", "steps"):
            v = getattr(self, key)
            _require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, key, v, "an integer ≥ 1")
        _require(isinstance(self.warmup, int) and self.warmup >= 0, "warmup", self.warmup, "an integer ≥ 0")
        _require(self.dtype in DTYPES, "dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        _require(self.mode in MODES, "mode", self.mode, f"one of {', '.join(MODES)}")
        _require(isinstance(self.checkpointing, bool), "checkpointing", self.checkpointing, "true or false")
        _require(isinstance(self.lr, (int, float)) and self.lr > 0, "lr", self.lr, "a number > 0")
        self.gpu = get_gpu(self.gpu).name
        from ngl_profile.schema.thresholds import Thresholds

        Thresholds.from_table(self.thresholds, "[thresholds]")  # bad keys or values fail at load time
        labels = [c.label for c in self.optimizers]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"optimizers: label {dup[0]!r} appears twice; give each entry a distinct label")

    def with_overrides(self, **overrides) -> "Scenario":
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Scenario(**values)

    def select(self, wanted: list[str]) -> "Scenario":
        """Only the optimizers named (by label or name), in the order given."""
        chosen = []
        for w in wanted:
            hits = [c for c in self.optimizers if w in (c.label, c.name)]
            if not hits:
                if any(c.name == w for c in chosen):
                    continue
                hits = [OptimizerCase(name=w)]  # not in the file: run it with its defaults
            chosen.extend(h for h in hits if h not in chosen)
        return self.with_overrides(optimizers=chosen)


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key} must be {allowed}; got {value!r}")


_SCENARIO_KEYS = {f.name for f in dataclasses.fields(Scenario)} - {"optimizers", "thresholds", "source"}


def scenario_dir() -> Path:
    env = os.environ.get("NGL_PROFILE_SCENARIOS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "scenarios"


def preset_names() -> list[str]:
    return sorted(p.stem for p in scenario_dir().glob("*.toml"))


def resolve_preset(name_or_path: str) -> Path:
    """'7b' → scenarios/llama-7b.toml; a path to a .toml file is taken as it is."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or os.sep in name_or_path:
        if not p.is_file():
            raise ScenarioError(f"{name_or_path}: no such scenario file")
        return p
    for stem in (name_or_path, f"llama-{name_or_path}"):
        candidate = scenario_dir() / f"{stem}.toml"
        if candidate.is_file():
            return candidate
    raise ScenarioError(f"unknown scenario {name_or_path!r}; presets: {', '.join(preset_names())} "
                        f"(or give a path to a .toml file)")


def load_scenario(name_or_path: str) -> Scenario:
    path = resolve_preset(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    unknown_tables = sorted(set(data) - {"scenario", "optimizers", "thresholds"})
    if unknown_tables:
        raise ScenarioError(f"{path}: unknown table(s) {', '.join(unknown_tables)}; "
                            "allowed: [scenario], [[optimizers]], [thresholds]")
    head = data.get("scenario")
    if not isinstance(head, dict):
        raise ScenarioError(f"{path}: missing [scenario] table")
    unknown = sorted(set(head) - _SCENARIO_KEYS)
    if unknown:
        raise ScenarioError(f"{path}: [scenario] has unknown key(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(_SCENARIO_KEYS))}")
    for key in ("name", "model"):
        if key not in head:
            raise ScenarioError(f"{path}: [scenario] needs {key!r}")
    entries = data.get("optimizers", [])
    if not isinstance(entries, list):
        raise ScenarioError(f"{path}: optimizers must be an array of tables ([[optimizers]])")
    cases = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ScenarioError(f"{path}: [[optimizers]] entry {i + 1} needs a name")
        hp = {k: v for k, v in entry.items() if k not in ("name", "label")}
        try:
            cases.append(OptimizerCase(name=entry["name"], label=entry.get("label", ""), hparams=hp))
        except ValueError as e:
            raise ScenarioError(f"{path}: [[optimizers]] entry {i + 1}: {e}") from None
    try:
        return Scenario(**head, optimizers=cases, thresholds=data.get("thresholds", {}), source=str(path))
    except (ValueError, TypeError) as e:
        raise ScenarioError(f"{path}: [scenario] {e}") from None
