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
from ngl_profile.zoo.models import ModelSpec, model_record, resolve_model, supports_sdpa

__all__ = ["Scenario", "OptimizerCase", "CaseSpec", "DTYPES", "MODES", "PRECISIONS", "ATTENTIONS",
           "PARALLELISMS", "check_name", "safe_name"]

DTYPES = ("bfloat16", "float32")
# precision recipe → the parameters' dtype. What each recipe holds in which dtype:
#   bf16             weights, grads, activations and optimizer state in bfloat16 (GaLore's 7B run)
#   fp32             everything in float32
#   mixed-bf16       float32 weights (the master copy), grads and state; forward under bf16 autocast
#   bf16-fp32-state  bfloat16 weights, grads and activations; optimizer moments in float32
PRECISIONS = {"bf16": "bfloat16", "fp32": "float32", "mixed-bf16": "float32", "bf16-fp32-state": "bfloat16"}
# transformers' attn_implementation names; flash_attention_2 is modelled as SDPA's flash kernel
# (the same saved tensors: output and log-sum-exp), since the flash-attn package is CUDA-only
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")
MODES = ("auto", "measured", "estimated")
PARALLELISMS = ("none", "ddp", "fsdp2")
MAX_WORLD_SIZE = 1 << 16
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
        rank (LoRA: its adapter rank) filled in where the case sets none, so every row shows its rank."""
        from ngl_profile.zoo.optimizers import LORA_DEFAULT_RANK, OPTIMIZERS

        spec = OPTIMIZERS[self.name]
        hp = dict(self.hparams)
        if "lr" in spec.hparams:
            hp.setdefault("lr", scn.lr)
        if spec.low_rank:
            hp.setdefault("rank", scn.model_spec.default_rank)
        elif "rank" in spec.hparams:
            hp.setdefault("rank", LORA_DEFAULT_RANK)
        return hp

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "hparams": dict(self.hparams)}


@dataclass(kw_only=True, slots=True)
class Scenario:
    name: str
    """scenario name, used in output paths"""
    model: str
    """the model's name. Given as: a zoo preset (`ngl-profile list models`), a config.json or a
    directory holding one, a hub id whose config is in the local Hugging Face cache, or a table
    (architecture + config keys; see zoo/models.py resolve_model) — resolved into model_config"""
    model_config: dict | None = None
    """the model as run (zoo/configs.py ModelSpec record: architecture, config keys, default rank,
    source); filled in from `model`, and what a case process rebuilds the model from"""
    seq_len: int = 256
    """tokens per sequence (the paper's pre-training setting is 256)"""
    batch_size: int = 1
    """sequences per step"""
    dtype: str = ""
    """the parameters' dtype, bfloat16 or float32 (default: the one `precision` implies)"""
    steps: int = 6
    """timed steps after warm-up (measured mode only)"""
    warmup: int = 1
    """untimed, untracked steps between the memory-tracked steps and the timed ones"""
    gpu: str = "rtx-4090"
    """target GPU from the catalog (`ngl-profile list gpus`)"""
    checkpointing: bool = False
    """activation checkpointing"""
    precision: str = ""
    """precision recipe: bf16, fp32, mixed-bf16 or bf16-fp32-state (default: from dtype; bf16)"""
    attention: str = "sdpa"
    """attention implementation: sdpa (transformers' default), eager or flash_attention_2"""
    code_paths: str = "gpu"
    """the code paths an estimate models: gpu (the target's: foreach AdamW, one finiteness check per
    step) or cpu (the CPU's, to compare with a CPU measurement); a measured run runs its device's"""
    mode: str = "auto"
    """auto (measured where the device allows, else estimated), measured or estimated"""
    parallelism: str = "none"
    """none (one process), ddp (torch DistributedDataParallel) or fsdp2 (torch fully_shard, one group
    per decoder layer plus the root); figures are per rank (per GPU)"""
    world_size: int = 1
    """ranks (GPUs) in data parallel; batch_size is per rank. An estimate plays rank 0 of them in one
    process; a measured run starts this many with torchrun"""
    lr: float = 1e-3
    """learning rate for optimizers that do not set their own"""
    optimizers: list[OptimizerCase] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)
    """regression limits for `ngl-profile check` when this run becomes a baseline"""
    source: str = ""
    """the file it came from"""

    def __post_init__(self) -> None:
        check_name(self.name)
        spec = self._settle_model()
        for key, (lo, hi) in _LIMITS.items():
            v = getattr(self, key)
            _require(is_int(v) and lo <= v <= hi, key, v, f"an integer in [{lo}, {hi}]")
        if spec.max_seq_len is not None:
            _require(self.seq_len <= spec.max_seq_len, "seq_len", self.seq_len,
                     f"at most {spec.max_seq_len} for {self.model} (its position embeddings)")
        self._settle_precision()
        _require(isinstance(self.attention, str) and self.attention in ATTENTIONS, "attention", self.attention,
                 f"one of {', '.join(ATTENTIONS)}")
        _require(self.code_paths in ("gpu", "cpu"), "code_paths", self.code_paths, "gpu or cpu")
        if self.attention == "flash_attention_2" and self.precision == "fp32":
            raise ValueError("attention flash_attention_2 needs bf16 compute; precision fp32 runs float32 "
                             "attention (use sdpa, or precision mixed-bf16)")
        _require(isinstance(self.mode, str) and self.mode in MODES, "mode", self.mode, f"one of {', '.join(MODES)}")
        _require(isinstance(self.parallelism, str) and self.parallelism in PARALLELISMS, "parallelism",
                 self.parallelism, f"one of {', '.join(PARALLELISMS)}")
        _require(is_int(self.world_size) and 1 <= self.world_size <= MAX_WORLD_SIZE, "world_size", self.world_size,
                 f"an integer in [1, {MAX_WORLD_SIZE}]")
        if self.parallelism == "none" and self.world_size != 1:
            raise ValueError(f"world_size {self.world_size} needs parallelism ddp or fsdp2 (parallelism is none: "
                             "one process)")
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

    def _settle_model(self) -> ModelSpec:
        """`model` (any form resolve_model takes) and model_config as one spec: the record is
        authoritative where given (a case spec, a results file), else resolved from `model`."""
        if self.model_config is not None:
            spec = ModelSpec.from_record(self.model_config)
            if isinstance(self.model, str) and self.model != spec.name:
                raise ValueError(f"model {self.model!r} and model_config (model {spec.name!r}) disagree")
        else:
            if not isinstance(self.model, (str, dict, ModelSpec)):
                raise ValueError(f"model must be a model name (see `ngl-profile list models`), a config.json, "
                                 f"a directory, a cached hub id or a [model] table; got {self.model!r}")
            spec = resolve_model(self.model)
        self.model, self.model_config = spec.name, spec.to_record()
        attention = getattr(self, "attention", "sdpa")
        if attention in ("sdpa", "flash_attention_2") and not supports_sdpa(spec):
            raise ValueError(f"attention {attention} is not available for {spec.name}: transformers has no SDPA "
                             f"path for {spec.architecture} (set attention = \"eager\", or --attention eager)")
        return spec

    @property
    def model_spec(self) -> ModelSpec:
        """The model as a spec (build_model, make_batch and parameter_count take it)."""
        return ModelSpec.from_record(self.model_config)

    def _settle_precision(self) -> None:
        """dtype and precision name one thing twice: either may be given, both only if they agree."""
        _require(isinstance(self.dtype, str) and self.dtype in DTYPES + ("",), "dtype", self.dtype,
                 f"one of {', '.join(DTYPES)}")
        _require(isinstance(self.precision, str) and self.precision in tuple(PRECISIONS) + ("",), "precision",
                 self.precision, f"one of {', '.join(PRECISIONS)}")
        if not self.precision:
            self.precision = {"float32": "fp32"}.get(self.dtype, "bf16")
        implied = PRECISIONS[self.precision]
        if self.dtype and self.dtype != implied:
            raise ValueError(f"dtype {self.dtype} contradicts precision {self.precision} (its parameters are "
                             f"{implied}); set only one of them")
        self.dtype = implied

    def with_overrides(self, **overrides) -> "Scenario":
        """A new, re-validated scenario; None values leave the field as it is (CLI > file)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        given = {k: v for k, v in overrides.items() if v is not None}
        if "model" in given and "model_config" not in given:  # another model: resolved afresh
            values["model_config"] = None
        for one, other in (("dtype", "precision"), ("precision", "dtype")):
            if one in given and other not in given:  # the file's other half would contradict it
                values[other] = ""
        values.update(given)
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
        d["model_config"] = model_record(self.model_spec)  # + parameter count and low-rank matrices
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
