"""Result records: versioned JSON written atomically, loaded with upgrades, and tidy pandas frames.

Records are plain dicts on disk (schema in `RunResult.to_dict`); in memory they are dataclasses.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ngl_profile.schema.categories import CATEGORIES

__all__ = ["SCHEMA_VERSION", "CaseResult", "RunResult", "ResultsError", "write_json_atomic",
           "load_results", "cases_frame", "memory_frame"]

SCHEMA_VERSION = 1


class ResultsError(ValueError):
    """A results file that cannot be used; the message is one line for the user."""


@dataclass(kw_only=True)
class CaseResult:
    optimizer: dict
    """{"name", "label", "hparams"}"""
    status: str
    """ok | oom | error"""
    message: str = ""
    provenance: str = "estimated"
    """measured | estimated"""
    memory_bytes: dict = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    peak_bytes: int = 0
    peak_phase: str = ""
    fits: bool | None = None
    headroom_bytes: int | None = None
    tokens_per_s: float | None = None
    step_time_s: dict = field(default_factory=dict)
    mfu: float | None = None
    flops_per_token: float | None = None
    """model FLOPs per token, 3 × forward (the MFU convention)"""
    step_flops: float | None = None
    """all counted FLOPs of one steady step, optimizer included"""
    projected: dict | None = None
    """roofline projection for the target GPU (estimated runs), labelled with its assumptions"""
    nvml: dict = field(default_factory=dict)
    host_rss_peak_bytes: int | None = None
    step_peaks_bytes: list = field(default_factory=list)
    timeline: list = field(default_factory=list)
    """[[event, live bytes, phase], ...] over one tracked step"""
    cuda: dict = field(default_factory=dict)
    """allocator figures (max allocated/reserved, cap) on CUDA"""
    params: dict = field(default_factory=dict)
    """parameter counts: total, trainable, low_rank"""
    duration_s: float | None = None
    skipped_updates: int = 0
    """parameter updates the optimizer skipped for non-finite gradients"""
    damping_backoffs: int = 0
    """Natural GaLore solves whose Cholesky failed at λ and were made at 1e3·λ or 1e6·λ instead"""

    @property
    def label(self) -> str:
        return self.optimizer.get("label") or self.optimizer["name"]


@dataclass(kw_only=True)
class RunResult:
    scenario: dict
    gpu: dict
    mode: str
    device: str
    environment: dict
    cases: list[CaseResult] = field(default_factory=list)
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schema_version"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunResult":
        d = _upgrade(dict(d))
        known = set(CaseResult.__dataclass_fields__)
        cases = [CaseResult(**{k: v for k, v in c.items() if k in known}) for c in d.get("cases", [])]
        return cls(scenario=d["scenario"], gpu=d["gpu"], mode=d["mode"], device=d["device"],
                   environment=d.get("environment", {}), cases=cases, created_utc=d.get("created_utc", ""),
                   schema_version=SCHEMA_VERSION)

    def case(self, label: str) -> CaseResult | None:
        return next((c for c in self.cases if c.label == label), None)


def _upgrade(d: dict) -> dict:
    version = d.get("schema_version")
    if not isinstance(version, int):
        raise ResultsError("no schema_version: not an ngl-profile results file")
    if version > SCHEMA_VERSION:
        raise ResultsError(f"schema_version {version} is newer than this ngl-profile understands "
                           f"({SCHEMA_VERSION}); upgrade ngl-profile")
    for key in ("scenario", "gpu", "mode", "device"):
        if key not in d:
            raise ResultsError(f"missing {key!r}")
    for c in d.get("cases", []):
        mem = c.setdefault("memory_bytes", {})
        for cat in CATEGORIES:  # older files may lack a category: it held nothing then
            mem.setdefault(cat, 0)
    return d


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a results file is not
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=_jsonable)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def load_results(path: str | Path) -> RunResult:
    """A results.json (or a run directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{p}: not a readable results file ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{p}: not a results object")
    try:
        return RunResult.from_dict(data)
    except ResultsError as e:
        raise ResultsError(f"{p}: {e}") from None
    except (KeyError, TypeError) as e:
        raise ResultsError(f"{p}: malformed results ({e})") from None


def load_many(paths) -> list[RunResult]:
    """Several results files; a corrupt one is skipped with a warning instead of stopping the rest."""
    out = []
    for p in paths:
        try:
            out.append(load_results(p))
        except ResultsError as e:
            warnings.warn(f"skipped: {e}", stacklevel=2)
    return out


def cases_frame(run: RunResult):
    """One row per case: label, status, provenance, peak, fits, tokens/s, ... (pandas)."""
    import pandas as pd

    rows = []
    for c in run.cases:
        rows.append({"scenario": run.scenario.get("name"), "model": run.scenario.get("model"),
                     "gpu": run.gpu.get("name"), "optimizer": c.label, "status": c.status,
                     "provenance": c.provenance, "peak_bytes": c.peak_bytes, "fits": c.fits,
                     "headroom_bytes": c.headroom_bytes, "tokens_per_s": c.tokens_per_s, "mfu": c.mfu,
                     "optimizer_step_s": c.step_time_s.get("optimizer")})
    return pd.DataFrame(rows)


def memory_frame(run: RunResult):
    """Tidy: one row per case × category, bytes (pandas)."""
    import pandas as pd

    rows = [{"scenario": run.scenario.get("name"), "model": run.scenario.get("model"),
             "gpu": run.gpu.get("name"), "mode": run.mode, "device": run.device, "optimizer": c.label,
             "status": c.status, "provenance": c.provenance, "category": cat, "bytes": int(c.memory_bytes[cat])}
            for c in run.cases for cat in CATEGORIES]
    return pd.DataFrame(rows)
