"""A model named by its transformers config, nothing downloaded: a `config.json` (a file, or the
directory `save_pretrained` writes), a hub id whose config is already in the local Hugging Face
cache, or a table of keys with an `architecture` (transformers' model_type). Each resolves to a
`ModelSpec`, a plain record that crosses to the case process as JSON and rebuilds the same model.

Keys of a table are checked against the config class: a key transformers would store without
using (a typo) is an error. A config.json is passed through as it is: it is transformers' own
format, with bookkeeping keys (architectures, transformers_version, torch_dtype) that must not be
refused.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ModelSpec", "TASKS", "TABLE_KEYS", "DERIVED_KEYS", "rank_for_hidden", "architectures",
           "check_architecture", "spec_from_config", "spec_from_table", "read_config", "hub_config",
           "check_buildable"]

TASKS = ("causal-lm", "sequence-classification")
TABLE_KEYS = ("name", "architecture", "config", "task", "default_rank", "description")
"""keys of a [model] table that are ngl-profile's own; every other key is the config's"""
# config keys that describe a checkpoint, not a shape: dropped from a config.json so records stay
# small and a cached config from another transformers version still builds
_BOOKKEEPING = ("architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path", "auto_map",
                "quantization_config", "use_cache", "_attn_implementation_autoset", "_commit_hash")
# absolute position tables: a sequence longer than the table cannot be embedded at all
_POSITION_TABLES = {"gpt2": ("n_positions", 0), "gpt_bigcode": ("n_positions", 0), "opt": ("max_position_embeddings", 0),
                    "gpt_neo": ("max_position_embeddings", 0), "bert": ("max_position_embeddings", 0),
                    "roberta": ("max_position_embeddings", 2), "xlm-roberta": ("max_position_embeddings", 2),
                    "camembert": ("max_position_embeddings", 2)}  # roberta's family reserves two for padding


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    """shown in tables and reports"""
    architecture: str
    """transformers' model_type: llama, mistral, mixtral, gpt2, roberta, ..."""
    config: dict = field(repr=False)
    """keyword arguments of the architecture's config class"""
    default_rank: int = 128
    """rank a low-rank optimizer uses when the scenario sets none"""
    description: str = ""
    max_seq_len: int | None = None
    """longest sequence the model can embed (None: rotary positions, no table to run past)"""
    task: str = "causal-lm"
    """causal-lm (AutoModelForCausalLM) or sequence-classification (2 labels)"""
    source: str = "preset"
    """where the config came from: preset, a file, hf-cache:<id>, or a table"""

    @property
    def family(self) -> str:
        return self.architecture

    def make_config(self, dtype=None, num_layers: int | None = None):
        """A fresh transformers config (callers may change it): use_cache off, `num_layers` deep."""
        from transformers import AutoConfig

        kwargs = dict(self.config, use_cache=False)
        if num_layers is not None:
            kwargs[_layers_key(self.architecture)] = num_layers
        if dtype is not None:
            kwargs["dtype"] = dtype
        if self.task == "sequence-classification":
            kwargs["num_labels"] = 2
        return AutoConfig.for_model(self.architecture, **kwargs)

    @property
    def text_config(self):
        """The config (its text part, for a multimodal one), built once per spec and shared: read only."""
        return _config_for(self.architecture, json.dumps(self.config, sort_keys=True))

    @property
    def n_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    def to_record(self) -> dict:
        return copy.deepcopy({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def from_record(cls, d: dict) -> "ModelSpec":
        """From `to_record`'s form (a case spec, a results file); keys derived from it (parameter
        counts) are ignored, unknown ones are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"model_config must be an object; got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - set(DERIVED_KEYS))
        if unknown:
            raise ValueError(f"model_config has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        for key in ("name", "architecture", "config"):
            if key not in d:
                raise ValueError(f"model_config needs {key!r}")
        spec = cls(**{k: v for k, v in d.items() if k in known})
        spec.check()
        return spec

    def check(self) -> None:
        """Types and ranges of the record's own fields (the config's keys are transformers' to judge)."""
        if not isinstance(self.name, str) or not self.name or len(self.name) > 200 or not self.name.isprintable():
            raise ValueError(f"model name must be a printable string of 1–200 characters; got {self.name!r}")
        if not isinstance(self.config, dict) or not all(isinstance(k, str) for k in self.config):
            raise ValueError(f"model {self.name}: config must be a table of keys; got {self.config!r}")
        if not isinstance(self.task, str) or self.task not in TASKS:
            raise ValueError(f"model {self.name}: task must be one of {', '.join(TASKS)}; got {self.task!r}")
        check_architecture(self.architecture, self.task)
        r = self.default_rank
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 1 << 16:
            raise ValueError(f"model {self.name}: default_rank must be an integer in [1, 65536]; got {r!r}")
        m = self.max_seq_len
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"model {self.name}: max_seq_len must be an integer ≥ 1 or null; got {m!r}")
        if not isinstance(self.description, str) or not isinstance(self.source, str):
            raise ValueError(f"model {self.name}: description and source must be strings")


DERIVED_KEYS = ("parameters", "low_rank_matrices")
"""what a results file's model record adds (models.model_record): recomputed, never read back"""


def rank_for_hidden(hidden: int) -> int:
    """hidden/4 rounded to the nearest power of two: GaLore's choices (128 at hidden 512, 256 at
    768 and 1024, 1024 at 4096), extended to every width."""
    return max(8, 2 ** round(math.log2(max(hidden, 32) / 4)))


def _layers_key(architecture: str) -> str:
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[architecture].attribute_map.get("num_hidden_layers", "num_hidden_layers")


@functools.lru_cache(maxsize=64)
def _config_for(architecture: str, config_json: str):
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(architecture, **json.loads(config_json))
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


@functools.lru_cache(maxsize=1)
def _mappings() -> tuple[frozenset, frozenset, frozenset]:
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

    return (frozenset(CONFIG_MAPPING.keys()), frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
            frozenset(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES))


def architectures(task: str = "causal-lm") -> list[str]:
    """The model_types transformers (as installed) builds for `task`, sorted."""
    _, causal, classify = _mappings()
    return sorted(causal if task == "causal-lm" else classify)


def check_architecture(architecture, task: str = "causal-lm") -> None:
    import transformers

    if not isinstance(architecture, str) or not architecture:
        raise ValueError(f"architecture must be a transformers model_type such as \"llama\"; got {architecture!r}")
    known, causal, classify = _mappings()
    builds = causal if task == "causal-lm" else classify
    if architecture in builds:
        return
    what = "AutoModelForCausalLM" if task == "causal-lm" else "AutoModelForSequenceClassification"
    if architecture in known:
        raise ValueError(f"architecture {architecture!r} is not a {task} model in transformers "
                         f"{transformers.__version__} ({what} has no class for it); known: {', '.join(sorted(builds))}")
    close = difflib.get_close_matches(architecture, sorted(builds), n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ValueError(f"unknown architecture {architecture!r} (transformers {transformers.__version__}); {hint}"
                     f"known: {', '.join(sorted(builds))}")


def spec_from_config(data: dict, name: str, source: str, task: str = "causal-lm") -> ModelSpec:
    """A config.json's content as a spec; the model_type names the architecture."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a config.json holds an object; got {type(data).__name__}")
    arch = data.get("model_type")
    if arch is None:
        raise ValueError(f"{source}: no model_type in the config (not a transformers config.json?)")
    if "auto_map" in data and arch not in _mappings()[0]:
        raise ValueError(f"{source}: model_type {arch!r} is custom code (auto_map), which ngl-profile does not "
                         "run; only architectures built into transformers are accepted")
    cfg = {k: v for k, v in data.items() if k != "model_type" and k not in _BOOKKEEPING}
    return _finish(ModelSpec(name=name, architecture=arch, config=cfg, task=task, source=source,
                             default_rank=8))


def spec_from_table(table: dict, base: ModelSpec | None = None) -> ModelSpec:
    """A [model] table: `architecture` plus config keys, or `config` (a spec resolved by the caller
    and passed as `base`) plus keys that override it. Keys are checked against the config class."""
    if not isinstance(table, dict):
        raise ValueError(f"model must be a table; got {table!r}")
    if ("architecture" in table) == (base is not None):
        raise ValueError("model must be a table with exactly one of architecture = \"<model_type>\" (see "
                         "transformers) or config = \"<preset, config.json, directory or cached hub id>\"")
    own = {k: table[k] for k in TABLE_KEYS if k in table and k != "config"}
    keys = {k: v for k, v in table.items() if k not in TABLE_KEYS}
    task = own.get("task", base.task if base else "causal-lm")
    arch = own.get("architecture", base.architecture if base else None)
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    check_architecture(arch, task)
    _check_keys(arch, keys)
    cfg = dict(base.config if base else {}, **keys)
    if base is not None and not keys and "name" not in own:
        name = base.name
    else:
        name = own.get("name", f"{base.name if base else arch}-custom")
    # the base's rank stands unless the width changes (a shallower copy trains the same matrices)
    keep_rank = base is not None and not set(keys) & {"hidden_size", "n_embd", "d_model"}
    rank = own.get("default_rank", base.default_rank if keep_rank else 8)
    if base is None:
        description = ""
    else:
        description = base.description if not keys else f"{base.name} with {', '.join(sorted(keys))} changed"
    spec = ModelSpec(name=name, architecture=arch, config=cfg, task=task, default_rank=rank,
                     description=own.get("description", description),
                     source=f"table ({base.source})" if base is not None else "table")
    return _finish(spec, rank_given="default_rank" in own or keep_rank)


def _finish(spec: ModelSpec, rank_given: bool = False) -> ModelSpec:
    """Checks the record, builds the config once (transformers' own validation, one line), and fills
    in what follows from it: the default rank (unless given) and the position-table limit."""
    spec.check()
    cfg = check_buildable(spec)
    rank = spec.default_rank if rank_given else rank_for_hidden(cfg.hidden_size)
    key, reserved = _POSITION_TABLES.get(spec.architecture, (None, 0))
    limit = getattr(cfg, key) - reserved if key else None
    return dataclasses.replace(spec, default_rank=rank, max_seq_len=limit)


def check_buildable(spec: ModelSpec):
    """The spec's transformers config, or a one-line ValueError with transformers' reason."""
    try:
        return spec.text_config
    except Exception as e:  # strict dataclass validation, and whatever a config's __post_init__ raises
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ValueError(f"model {spec.name}: transformers refuses its config: {' '.join(lines[:3]) or type(e).__name__}") \
            from None


def _check_keys(architecture: str, keys: dict) -> None:
    """A key the config class neither declares nor converts would be stored and never used."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[architecture]
    declared = ({f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()) | \
        set(getattr(cls, "attribute_map", {}))
    unknown = []
    for k in keys:
        if k in declared or k == "model_type":
            continue
        try:  # a legacy key (rope_theta, rope_scaling) is consumed; a typo stays as an attribute
            stored = k in cls(**{k: keys[k]}).__dict__
        except Exception:
            stored = False  # its value is wrong: the full build reports that, with transformers' reason
        if stored:
            unknown.append(k)
    if "model_type" in keys:
        raise ValueError("model_type is spelled architecture here")
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, sorted(declared), n=1)
        raise ValueError(f"{architecture} has no config key {k!r}"
                         + (f" (did you mean {close[0]!r}?)" if close else "")
                         + " — a key transformers would store without using is refused")


def read_config(path: Path) -> tuple[dict, str, str]:
    """(config.json content, model name, source) from a config file or a directory holding one."""
    p = Path(path)
    f = p / "config.json" if p.is_dir() else p
    if not f.is_file():
        raise ValueError(f"{path}: a directory without a config.json" if p.is_dir() else f"{path}: no such file")
    try:
        data = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{f}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON: {e}") from None
    folder = f.resolve().parent
    name = folder.name if f.name == "config.json" else f.stem
    return data, name or "model", str(f.resolve())


def hub_config(repo_id: str) -> tuple[dict, str] | None:
    """(config.json content, source) for a hub id whose config is in the local Hugging Face cache;
    None when it is not there. Never touches the network."""
    from transformers.utils import cached_file

    try:
        path = cached_file(repo_id, "config.json", local_files_only=True,
                           _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):  # not a valid repo id
        return None
    if path is None:
        return None
    data, _, _ = read_config(Path(path))
    return data, f"hf-cache:{repo_id}"
