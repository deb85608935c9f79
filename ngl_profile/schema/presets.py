"""Scenario files: TOML that names a model, a target GPU and the optimizers to compare.

    [scenario]
    name = "llama-7b"
    model = "llama-7b"
    seq_len = 256
    [[optimizers]]
    name = "natural-galore-8bit-layerwise"
    label = "natural-galore (fits 24 GB)"   # optional; needed when a name appears twice
    rank = 1024

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

from ngl_profile.schema.scenario import OptimizerCase, Scenario
from ngl_profile.schema.thresholds import Thresholds

__all__ = ["ScenarioError", "load_scenario", "resolve_preset", "scenario_dir", "preset_names", "read_toml"]

_TABLES = ("scenario", "optimizers", "thresholds")
_SCENARIO_KEYS = ("name", "model", "seq_len", "batch_size", "dtype", "steps", "warmup", "gpu", "checkpointing",
                  "mode", "lr")


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


def load_scenario(name_or_path: str) -> Scenario:
    path = resolve_preset(name_or_path)
    data = read_toml(path)
    unknown = sorted(set(data) - set(_TABLES))
    if unknown:
        raise ScenarioError(f"{path}: unknown table(s) {', '.join(unknown)}; "
                            "allowed: [scenario], [[optimizers]], [thresholds]")
    head = data.get("scenario")
    if not isinstance(head, dict):
        raise ScenarioError(f"{path}: missing [scenario] table")
    unknown = sorted(set(head) - set(_SCENARIO_KEYS))
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
