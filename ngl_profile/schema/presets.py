"""Scenario files: TOML that names a model, a target GPU and the optimizers to compare.

    [scenario]
    name = "llama-7b"
    model = "llama-7b"
    seq_len = 256
    [[optimizers]]
    name = "natural-galore-8bit-layerwise"
    label = "natural-galore (fits 24 GB)"   # optional; needed when a name appears twice
    rank = 1024

The model is a [scenario] key (a preset, a config.json or a directory holding one — relative to
the file — or a hub id whose config is in the local Hugging Face cache) or a [model] table:

    [model]
    architecture = "mistral"          # transformers' model_type
    hidden_size = 2048                # ... and any key of its config class
    # or: config = "llama-3.1-8b" (any of the forms above) plus the keys that change it

A name that is no scenario but names a model runs that model with the default scenario
(`default_scenario`): `ngl-profile run llama-3.1-8b`, `ngl-profile run ./my-model/`.

Precedence: CLI options > the file > the defaults in schema/scenario.py. Every error names the
file, the key and what is allowed, in one line.
"""
from __future__ import annotations

import os
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ngl_profile.schema.scenario import OptimizerCase, Scenario, safe_name
from ngl_profile.schema.thresholds import Thresholds

__all__ = ["ScenarioError", "load_scenario", "resolve_preset", "scenario_dir", "preset_names", "read_toml",
           "default_scenario", "DEFAULT_OPTIMIZERS"]

# [quality]: `ngl-profile train`'s table (ngl_profile/quality/config.py reads it; `run` ignores it)
_TABLES = ("scenario", "model", "optimizers", "thresholds", "quality")
DEFAULT_OPTIMIZERS = ("adamw", "adamw8bit", "galore", "natural-galore", "natural-galore-8bit-layerwise", "lora")
"""what `ngl-profile run <model>` compares, each at its defaults (low-rank ones at the model's rank)"""
_SCENARIO_KEYS = ("name", "model", "seq_len", "batch_size", "dtype", "steps", "warmup", "gpu", "checkpointing",
                  "mode", "lr", "precision", "attention", "code_paths", "parallelism", "world_size")


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message is one line for the user."""


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


def read_toml(path: Path, what: str = "file") -> dict:
    """A TOML file's tables; any failure is one ScenarioError line naming the file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ScenarioError(f"{path}: is a directory, not a {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {str(e).splitlines()[0]}") from None


def default_scenario(model) -> Scenario:
    """The scenario `ngl-profile run <model>` runs: the GaLore paper's setting (bf16, batch 1 ×
    sequence 256, or the model's longest if shorter) on the default GPU, comparing
    DEFAULT_OPTIMIZERS; eager attention where transformers has no SDPA path for the model."""
    from ngl_profile.zoo.models import resolve_model, supports_sdpa

    spec = resolve_model(model)
    return Scenario(name=safe_name(spec.name), model=spec, seq_len=min(256, spec.max_seq_len or 256),
                    attention="sdpa" if supports_sdpa(spec) else "eager",
                    optimizers=[OptimizerCase(name=n) for n in DEFAULT_OPTIMIZERS],
                    source=f"default scenario for model {spec.name} ({spec.source})")


def _is_scenario(name_or_path: str) -> bool:
    if name_or_path.endswith(".toml"):
        return True
    try:
        resolve_preset(name_or_path)
    except ScenarioError:
        return False
    return True


def load_scenario(name_or_path: str) -> Scenario:
    """A scenario preset or .toml file; anything else that names a model, that model with the
    default scenario."""
    if not _is_scenario(name_or_path):
        return _model_as_scenario(name_or_path)
    path = resolve_preset(name_or_path)
    data = read_toml(path)
    unknown = sorted(set(data) - set(_TABLES))
    if unknown:
        raise ScenarioError(f"{path}: unknown table(s) {', '.join(unknown)}; "
                            "allowed: [scenario], [model], [[optimizers]], [thresholds], [quality]")
    head = data.get("scenario")
    if not isinstance(head, dict):
        raise ScenarioError(f"{path}: missing [scenario] table")
    unknown = sorted(set(head) - set(_SCENARIO_KEYS))
    if unknown:
        raise ScenarioError(f"{path}: [scenario] has unknown key(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(_SCENARIO_KEYS))}")
    head = dict(head)
    if "name" not in head:
        raise ScenarioError(f"{path}: [scenario] needs 'name'")
    head["model"] = _file_model(path, head, data.get("model"))
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
    thresholds = data.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise ScenarioError(f"{path}: thresholds must be a table ([thresholds])")
    try:
        limits = Thresholds.from_table(thresholds, "[thresholds]")
    except ValueError as e:
        raise ScenarioError(f"{path}: {e}") from None
    try:
        return Scenario(**head, optimizers=cases, thresholds=limits, source=str(path))
    except ValueError as e:
        raise ScenarioError(f"{path}: [scenario] {e}") from None


def _file_model(path: Path, head: dict, table):
    """The file's model as a spec: [scenario] model (relative paths from the file's folder) or the
    [model] table, never both."""
    from ngl_profile.zoo.models import resolve_model

    if table is not None and "model" in head:
        raise ScenarioError(f"{path}: the model is given twice ([scenario] model and a [model] table); keep one")
    if table is None and "model" not in head:
        raise ScenarioError(f"{path}: [scenario] needs 'model' (or a [model] table)")
    where = "[model]" if table is not None else "[scenario] model"
    try:
        return resolve_model(table if table is not None else head["model"], base_dir=path.parent)
    except ValueError as e:
        raise ScenarioError(f"{path}: {where}: {e}") from None


def _model_as_scenario(ref: str) -> Scenario:
    from ngl_profile.zoo.models import MODELS

    try:
        return default_scenario(ref)
    except ValueError as e:
        if not str(e).startswith("unknown model"):  # a model it names, that cannot be used: say why
            raise ScenarioError(str(e)) from None
        raise ScenarioError(f"unknown scenario {ref!r}; presets: {', '.join(preset_names())} (or a .toml file); "
                            f"nor a model: presets {', '.join(MODELS)}, a config.json, a directory holding one, "
                            "or a hub id whose config is in the local Hugging Face cache") from None
