"""The [quality] table of a scenario file: how `ngl-profile train` trains each optimizer.

    [quality]
    steps = 200                  # optimizer steps per run (every optimizer: equal tokens)
    seeds = 3                    # runs per optimizer; seed k: the same initialisation and batches for all
    eval_every = 25              # held-out loss every this many steps (and at the end)
    eval_sequences = 32          # held-out windows of seq_len bytes (the same ones for every run)
    warmup_fraction = 0.1        # linear warm-up, then cosine decay to min_lr_ratio × lr (GaLore's schedule)
    min_lr_ratio = 0.1
    lr_grid = [1e-3, 3e-3, 1e-2] # each case without its own lr is tuned over these (empty: no sweep)
    # or one grid per case label, "*" for every other case:
    # lr_grid = { adamw = [1e-3, 3e-3, 1e-2], "*" = [3e-3, 1e-2, 3e-2] }
    tune_steps = 0               # steps of a tuning run (0: steps), one seed, judged on the tune split
    official_formula = ["ngl s=10"]  # natural-galore labels also run with the official printed formula
    max_bytes = 0                # cap on the corpus (whole files; 0: all of it)

Typed and validated here: a bad value is one line naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ngl_profile.zoo.hparams import is_int, is_number

__all__ = ["QualitySpec", "load_quality"]


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"quality.{key} must be {allowed}; got {value!r}")


@dataclass(kw_only=True, slots=True)
class QualitySpec:
    steps: int = 200
    """optimizer steps per training run; every optimizer sees steps × batch × seq_len tokens"""
    seeds: int = 3
    """training runs per optimizer (seed k: one initialisation and one batch order, shared by all)"""
    eval_every: int = 25
    """steps between held-out evaluations (step 0 and the last step are always evaluated)"""
    eval_sequences: int = 32
    """held-out windows of seq_len bytes each evaluation reads"""
    warmup_fraction: float = 0.1
    """share of the steps with a linear learning-rate warm-up"""
    min_lr_ratio: float = 0.1
    """the cosine decay's floor, as a fraction of the peak lr (GaLore's torchrun_main default)"""
    lr_grid: list | dict = field(default_factory=list)
    """learning rates a case without its own lr is tuned over (empty: the scenario's lr, no sweep);
    a table maps case labels (and "*", every other case) to their own grids"""
    tune_steps: int = 0
    """steps of each tuning run (0: the same as steps)"""
    official_formula: list = field(default_factory=list)
    """labels of natural-galore cases to run a second time with the official code's printed formula"""
    max_bytes: int = 0
    """at most this many bytes of the corpus, whole files (0: all)"""
    heldout_every: int = 10
    """every this-many-th file (in name order) is held out"""
    timing_warmup: int = 3
    """first steps of each run left out of tokens/s (allocator and caches settling)"""

    def __post_init__(self) -> None:
        for key, lo, hi in (("steps", 1, 1_000_000), ("seeds", 1, 100), ("eval_every", 1, 1_000_000),
                            ("eval_sequences", 1, 100_000), ("tune_steps", 0, 1_000_000),
                            ("max_bytes", 0, 1 << 40), ("heldout_every", 2, 1000), ("timing_warmup", 0, 1000)):
            v = getattr(self, key)
            _require(is_int(v) and lo <= v <= hi, key, v, f"an integer in [{lo}, {hi}]")
        _require(is_number(self.warmup_fraction) and 0 <= self.warmup_fraction < 1, "warmup_fraction",
                 self.warmup_fraction, "a number in [0, 1)")
        _require(is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio,
                 "a number in [0, 1]")
        grids = self.lr_grid.values() if isinstance(self.lr_grid, dict) else [self.lr_grid]
        _require(all(isinstance(g, list) and all(is_number(x) and x > 0 for x in g) for g in grids), "lr_grid",
                 self.lr_grid, 'a list of finite numbers > 0, or a table of such lists by case label (and "*")')
        _require(isinstance(self.official_formula, list) and all(isinstance(x, str) for x in self.official_formula),
                 "official_formula", self.official_formula, "a list of case labels")

    def grid_for(self, label: str) -> list:
        """The learning rates the case `label` is tuned over ([]: none)."""
        if isinstance(self.lr_grid, dict):
            return list(self.lr_grid.get(label, self.lr_grid.get("*", [])))
        return list(self.lr_grid)

    @property
    def tune_length(self) -> int:
        return self.tune_steps or self.steps

    def with_overrides(self, **overrides) -> "QualitySpec":
        """A new, re-validated spec; None values leave a key as it is (CLI > file)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return QualitySpec(**values)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_table(cls, table, where: str) -> "QualitySpec":
        if not isinstance(table, dict):
            raise ValueError(f"{where}: [quality] must be a table")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{where}: [quality] has unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(known))}")
        try:
            return cls(**table)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def load_quality(ref: str):
    """(Scenario, QualitySpec) of a scenario preset or file with a [quality] table; the scenario's
    model must read bytes (vocab_size 256) and every case must be one `train` can schedule."""
    from ngl_profile.schema.presets import ScenarioError, load_scenario, read_toml, resolve_preset

    path = resolve_preset(ref)
    table = read_toml(path).get("quality")
    if table is None:
        raise ScenarioError(f"{path}: no [quality] table: `ngl-profile train` needs one (see "
                            "scenarios/quality-tiny.toml)")
    spec = QualitySpec.from_table(table, str(path))
    scn = load_scenario(str(path))
    check_trainable(scn, spec, str(path))
    return scn, spec


def check_trainable(scn, spec: QualitySpec, where: str) -> None:
    """ValueError, before anything trains, for what quality mode cannot do with this scenario."""
    from ngl_profile.quality.data import VOCAB_SIZE

    vocab = scn.model_spec.vocab_size
    if vocab != VOCAB_SIZE:
        raise ValueError(f"{where}: quality mode trains on bytes: the model's vocab_size must be {VOCAB_SIZE}, "
                         f"not {vocab} (a [model] table with config = \"{scn.model}\" and vocab_size = 256)")
    if scn.model_spec.task != "causal-lm":
        raise ValueError(f"{where}: quality mode trains causal language models; {scn.model} is a {scn.model_spec.task}")
    if scn.precision not in ("fp32", "bf16"):
        # the memory estimate builds the model and optimizer as they are, without the recipe's autocast or
        # float32 moments: it would describe another program than the one trained
        raise ValueError(f"{where}: quality mode trains precision fp32 or bf16, not {scn.precision}")
    if not scn.optimizers:
        raise ValueError(f"{where}: no [[optimizers]] to train")
    labels = {c.label: c for c in scn.optimizers}
    if isinstance(spec.lr_grid, dict):
        stray = sorted(set(spec.lr_grid) - set(labels) - {"*"})
        if stray:
            raise ValueError(f"{where}: quality.lr_grid names {', '.join(map(repr, stray))}, which is no case's "
                             f"label; labels: {', '.join(labels)} (or \"*\" for every other case)")
    for c in scn.optimizers:
        if c.name.endswith("-layerwise") or c.name == "lora":
            raise ValueError(f"{where}: case {c.label!r}: quality mode schedules one optimizer per model "
                             f"({c.name} is not supported: per-layer optimizers and LoRA are left out)")
    for label in spec.official_formula:
        case = labels.get(label)
        if case is None:
            raise ValueError(f"{where}: quality.official_formula names {label!r}, which is no case's label; "
                             f"labels: {', '.join(labels)}")
        if case.name != "natural-galore":
            raise ValueError(f"{where}: quality.official_formula: {label!r} is {case.name}; the official formula "
                             "is a natural-galore variant")
        if case.hparams.get("history_dtype", "float32") != "float32":
            raise ValueError(f"{where}: quality.official_formula: {label!r} keeps a {case.hparams['history_dtype']} "
                             "window; the official code's is float32")
