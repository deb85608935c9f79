"""Result records: versioned JSON written atomically, loaded with upgrades, and tidy pandas frames.

Records are plain dicts on disk (schema in `RunResult.to_dict`); in memory they are dataclasses.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ngl_profile.schema.categories import CATEGORIES

__all__ = ["SCHEMA_VERSION", "CaseResult", "RunResult", "ResultsError", "write_json_atomic",
           "load_results", "cases_frame", "memory_frame"]

SCHEMA_VERSION = 2
# 2: step_time_stats and tokens_per_s_stats, the spread of the timed steps (a version-1 file has none:
#    its speed is judged on medians alone)


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
    step_time_stats: dict = field(default_factory=dict)
    """phase (forward, backward, optimizer, total) → the statistics of its seconds over the timed steps:
    rounds, median, q1, q3, iqr, min, max, mean, stddev (measure/timing.py); step_time_s holds the medians"""
    tokens_per_s_stats: dict | None = None
    """the same statistics of tokens/s; its median is tokens_per_s"""
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
    """allocator figures: max allocated/reserved and cap on CUDA; elsewhere the simulated ones, with their source"""
    params: dict = field(default_factory=dict)
    """parameter counts: total, trainable, low_rank"""
    duration_s: float | None = None
    skipped_updates: int = 0
    """parameter updates the optimizer skipped for non-finite gradients"""
    code_path: str = ""
    """the optimizer implementation whose allocations were counted, e.g. "torch AdamW, foreach (CUDA
    default)": the same optimizer allocates differently on different code paths"""
    distributed: dict = field(default_factory=dict)
    """DDP/FSDP2 runs: parallelism, world_size, rank, backend, and roles_at_peak_bytes (what distribution
    adds, counted inside weights and grads: unsharded weights, all-gather and reduce-scatter buffers,
    unsharded grads, DDP's gradient buckets); empty for one process"""
    ranks: list = field(default_factory=list)
    """measured DDP/FSDP2 runs: every rank's own record (memory_bytes, peak_bytes, peak_phase,
    distributed, status, message); the case's own figures are those of the rank with the largest peak"""
    damping_backoffs: int = 0
    """damping tiers Natural GaLore's solves climbed, summed: 1 for a solve made at 1e3·λ because the
    Cholesky failed at λ, 2 at 1e6·λ, 3 where none factored; 0 when every solve used the λ asked for"""
    quality: dict | None = None
    """`ngl-profile train`'s record (ngl_profile/quality/run.py): held-out loss over seeds (heldout_loss,
    heldout_loss_stats), the lr and its sweep, the curves; None for a profile run"""

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
        """A record from its JSON form: upgraded to this schema version, then checked against it, so a
        wrong shape is one ResultsError naming the key here, not a TypeError in whatever reads it later."""
        d = _upgrade(d)
        _RUN(d, "")
        known = set(CaseResult.__dataclass_fields__)
        cases = [CaseResult(**{k: v for k, v in c.items() if k in known}) for c in d.get("cases", [])]
        return cls(scenario=d["scenario"], gpu=d["gpu"], mode=d["mode"], device=d["device"],
                   environment=d.get("environment", {}), cases=cases, created_utc=d.get("created_utc", ""),
                   schema_version=SCHEMA_VERSION)

    def case(self, label: str) -> CaseResult | None:
        return next((c for c in self.cases if c.label == label), None)

    @property
    def planned(self) -> list[str] | None:
        """Labels of the cases the run set out to make, in order (its scenario's optimizers). The runner
        rewrites the file as each case ends, so fewer cases than this is an interrupted run. None where
        the scenario does not list them (files written before it did)."""
        opts = self.scenario.get("optimizers")
        if not isinstance(opts, list):
            return None
        return [o.get("label") or o.get("name") for o in opts if isinstance(o, dict)]


def _upgrade(d: dict) -> dict:
    """Older versions brought to this one (a copy). It tolerates any shape: `_RUN` judges it after."""
    version = d.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ResultsError("no schema_version: not an ngl-profile results file")
    if version > SCHEMA_VERSION:
        raise ResultsError(f"schema_version {version} is newer than this ngl-profile understands "
                           f"({SCHEMA_VERSION}); upgrade ngl-profile")
    d = dict(d)
    # 1 → 2 added the timing statistics: a version-1 case has none, which its readers take as its
    # spread being unknown, not as no spread
    if isinstance(d.get("cases"), list):
        d["cases"] = [_upgrade_case(c) for c in d["cases"]]
    return d


def _upgrade_case(c):
    if isinstance(c, dict) and isinstance(c.get("memory_bytes", {}), dict):
        # older files may lack a category: it held nothing then
        c = dict(c, memory_bytes={**dict.fromkeys(CATEGORIES, 0), **c.get("memory_bytes", {})})
    return c


# --- the schema, as validators: each takes (value, key path) and raises ResultsError naming the path ---

def _show(v) -> str:
    if isinstance(v, str):
        return json.dumps(v if len(v) <= 40 else v[:37] + "...")
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return json.dumps(v)  # numbers, true/false, null; NaN and Infinity as JSON writes them


def _key(path: str, k: str) -> str:
    """`path.k`, or `path["k"]` for a key that would not read as one (spaces, dots, newlines)."""
    seg = f".{k}" if k.isidentifier() else f"[{json.dumps(k)}]"
    return seg[1:] if not path and seg.startswith(".") else path + seg


def _fail(path: str, expected: str, got) -> None:
    raise ResultsError(f"{path}: expected {expected}, got {_show(got)}")


def _number(minimum: float | None = None, *, integer: bool = False, optional: bool = False):
    """A finite number (bool is not one); null too if optional."""
    what = ("an integer" if integer else "a number") + ("" if minimum is None else f" ≥ {minimum:g}")
    what += " or null" if optional else ""

    def check(v, path):
        if v is None and optional:
            return
        if not isinstance(v, (int, float)) or isinstance(v, bool) or (integer and not isinstance(v, int)):
            _fail(path, what, v)
        if not math.isfinite(v):
            _fail(path, f"a finite number{' or null' if optional else ''}", v)
        if minimum is not None and v < minimum:
            _fail(path, what, v)
    return check


def _string(*allowed: str, nonempty: bool = False, optional: bool = False):
    what = f"one of {', '.join(map(json.dumps, allowed))}" if allowed else "a non-empty string" if nonempty \
        else "a string"
    what += " or null" if optional else ""

    def check(v, path):
        if v is None and optional:
            return
        if not isinstance(v, str) or (allowed and v not in allowed) or (nonempty and not v):
            _fail(path, what, v)
    return check


def _boolean(optional: bool = False):
    def check(v, path):
        if not (isinstance(v, bool) or (v is None and optional)):
            _fail(path, "true or false" + (" or null" if optional else ""), v)
    return check


def _scalar(v, path):
    if v is None or isinstance(v, (str, bool)):
        return
    _number()(v, path)


def _any(v, path):
    pass


def _list(of, *, optional: bool = False):
    def check(v, path):
        if v is None and optional:
            return
        if not isinstance(v, list):
            _fail(path, "a list" + (" or null" if optional else ""), v)
        for i, x in enumerate(v):
            of(x, f"{path}[{i}]")
    return check


def _object(of=_any, *, optional: bool = False):
    """An object whose every value passes `of`."""
    def check(v, path):
        if v is None and optional:
            return
        if not isinstance(v, dict):
            _fail(path, "an object" + (" or null" if optional else ""), v)
        for k, x in v.items():
            of(x, _key(path, k))
    return check


def _optional(of):
    def check(v, path):
        if v is not None:
            of(v, path)
    return check


def _record(fields: dict, required: tuple = (), *, optional: bool = False):
    """An object with known keys (checked when present; `required` ones must be); others are ignored."""
    def check(v, path):
        if v is None and optional:
            return
        if not isinstance(v, dict):
            _fail(path or "the file", "an object" + (" or null" if optional else ""), v)
        for k in required:
            if k not in v:
                raise ResultsError(f"{path + ': ' if path else ''}missing {k!r}")
        for k, of in fields.items():
            if k in v:
                of(v[k], _key(path, k))
    return check


def _thresholds_table(v, path):
    from ngl_profile.schema.thresholds import Thresholds

    try:
        Thresholds.from_table(v, path)
    except ValueError as e:
        raise ResultsError(str(e)) from None


_STAT_ORDER = ("min", "q1", "median", "q3", "max")


def _stats(v, path):
    """pytest-benchmark's statistics of one timed figure, in order: min ≤ q1 ≤ median ≤ q3 ≤ max."""
    _record({"rounds": _number(1, integer=True), **{k: _number(0) for k in _STAT_ORDER + ("iqr", "mean", "stddev")}},
            required=("rounds",) + _STAT_ORDER)(v, path)
    values = [v[k] for k in _STAT_ORDER]
    if values != sorted(values):
        _fail(path, "statistics with min ≤ q1 ≤ median ≤ q3 ≤ max", v)


def _allocator_figures(v, path):
    """Numbers (or null), and one line naming where simulated ones came from (allocator_model)."""
    _object()(v, path)
    for k, x in v.items():
        (_string() if k == "allocator_model" else _number(optional=True))(x, _key(path, k))


def _timeline_event(v, path):
    if not (isinstance(v, list) and len(v) == 3):
        _fail(path, "[event, live bytes, phase]", v)
    _number(0)(v[0], f"{path}[0]")
    _number(0)(v[1], f"{path}[1]")
    _string()(v[2], f"{path}[2]")


_BYTES, _COUNT, _SECONDS = _number(0), _number(0, integer=True), _number(0, optional=True)
_OPTIMIZER = _record({"name": _string(nonempty=True), "label": _string(optional=True), "hparams": _object()},
                     required=("name",))
_CASE = _record({
    "optimizer": _OPTIMIZER,
    "status": _string("ok", "oom", "error"), "message": _string(), "provenance": _string("measured", "estimated"),
    "memory_bytes": _object(_BYTES), "peak_bytes": _BYTES, "peak_phase": _string(),
    "fits": _boolean(optional=True), "headroom_bytes": _number(optional=True),
    "tokens_per_s": _number(0, optional=True), "step_time_s": _object(_SECONDS),
    "step_time_stats": _object(_stats), "tokens_per_s_stats": _optional(_stats),
    "mfu": _number(0, optional=True), "flops_per_token": _number(0, optional=True),
    "step_flops": _number(0, optional=True),
    "projected": _record({"tokens_per_s_upper_bound": _number(0), "gpu": _string(optional=True),
                          "assumptions": _string()}, required=("tokens_per_s_upper_bound", "assumptions"),
                         optional=True),
    "nvml": _object(_scalar), "host_rss_peak_bytes": _number(0, optional=True),
    "step_peaks_bytes": _list(_BYTES), "timeline": _list(_timeline_event),
    "cuda": _allocator_figures, "params": _object(_COUNT),
    "duration_s": _SECONDS, "skipped_updates": _COUNT, "damping_backoffs": _COUNT, "code_path": _string(),
    "distributed": _record({"parallelism": _string("ddp", "fsdp2"), "world_size": _number(1, integer=True),
                            "rank": _COUNT, "backend": _string(), "roles_at_peak_bytes": _object(_BYTES)}),
    "ranks": _list(_record({"rank": _COUNT, "status": _string("ok", "oom", "error"), "message": _string(),
                            "memory_bytes": _object(_BYTES), "peak_bytes": _BYTES, "peak_phase": _string(),
                            "distributed": _object()}, required=("rank", "status"))),
    "quality": _record({"heldout_loss": _number(0, optional=True), "heldout_loss_stats": _optional(_stats)},
                       optional=True),
}, required=("optimizer", "status"))
_RUN = _record({
    "scenario": _record({"name": _string(nonempty=True), "model": _string(nonempty=True),
                         "seq_len": _number(1, integer=True), "batch_size": _number(1, integer=True),
                         "dtype": _string(nonempty=True), "steps": _number(1, integer=True),
                         "warmup": _COUNT, "checkpointing": _boolean(), "gpu": _string(), "mode": _string(),
                         "precision": _string(), "attention": _string(), "code_paths": _string(),
                         "lr": _number(), "thresholds": _thresholds_table, "source": _string(),
                         "optimizers": _list(_OPTIMIZER)},
                        required=("name", "model", "seq_len", "batch_size", "dtype")),
    # a card given only by its memory size (--gpu 20GiB) has no TFLOP/s or bandwidth: null
    "gpu": _record({"name": _string(nonempty=True), "memory_bytes": _number(1),
                    "bf16_tflops": _number(0, optional=True), "bandwidth_gbs": _number(0, optional=True),
                    "source": _string()}, required=("name", "memory_bytes")),
    "mode": _string("measured", "estimated"), "device": _string(nonempty=True),
    "environment": _object(_scalar), "cases": _list(_CASE), "created_utc": _string(),
}, required=("scenario", "gpu", "mode", "device"))


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes it private; a results file is not (no umask dance: threads)
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ResultsError(f"{p}: not a readable results file ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{p}: not a results object: expected an object, got {_show(data)}")
    try:
        return RunResult.from_dict(data)
    except ResultsError as e:
        raise ResultsError(f"{p}: {e}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # the schema should have said: a gap in it
        raise ResultsError(f"{p}: malformed results ({e.__class__.__name__}: {e})") from None


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
