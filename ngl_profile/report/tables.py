"""Tables from finished records (never from a runner or an optimizer): rich for the terminal,
Markdown for files. One row per optimizer case.

Sizes read in binary units (GiB, MiB: the default, what torch and nvidia-smi print) or decimal ones
(GB, MB: what datasheets print), `units="GiB"` or `"GB"`; every size says its unit, in its cell or its
column's header, and this module is the one place that formats them."""
from __future__ import annotations

from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.results import RunResult
from ngl_profile.zoo.gpus import GB, GiB, MB, MiB

__all__ = ["SHORT", "UNITS", "check_units", "human_bytes", "unit_note", "large_unit", "size_unit", "summary_rows",
           "summary_columns", "row_state", "rich_summary", "markdown_table", "provenance_line", "unit_for",
           "title_line", "recipe_note", "checkpointing_note", "rank_of", "code_paths", "fit_table"]

SHORT = {"weights": "weights", "grads": "grads", "moments": "moments", "quant_stats": "quant",
         "projectors": "proj", "history": "history", "activations": "activ", "temporaries": "temp",
         "allocator_slack": "slack", "context": "context"}
_CATEGORY = {short: k for k, short in SHORT.items()}
UNITS = ("GiB", "GB")
# largest first: the unit a size is shown in is the largest it fills
_FAMILY = {"GiB": (("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)), "GB": (("GB", GB), ("MB", MB), ("kB", 1000))}
_NOTE = {"GiB": "2³⁰ bytes", "MiB": "2²⁰ bytes", "KiB": "2¹⁰ bytes", "GB": "10⁹ bytes", "MB": "10⁶ bytes",
         "kB": "10³ bytes", "B": "bytes"}


def check_units(units: str) -> str:
    if units not in UNITS:
        raise ValueError(f"units {units!r}: expected GiB (2^30 bytes) or GB (10^9 bytes)")
    return units


def unit_note(unit: str) -> str:
    """"GiB (2³⁰ bytes)": a unit with what it means, for titles."""
    return f"{unit} ({_NOTE[unit]})"


def human_bytes(n: float, units: str = "GiB", decimals: int | None = None) -> str:
    """`n` bytes in the largest unit of the family (`units`: "GiB" binary, "GB" decimal) it fills: two
    decimals below 100 (as the tables show sizes), one below 1000, none above; `decimals` fixes the
    count (0 for axis ticks)."""
    for unit, scale in _FAMILY[check_units(units)]:
        if abs(n) >= scale:
            v = n / scale
            d = decimals if decimals is not None else 2 if abs(v) < 100 else 1 if abs(v) < 1000 else 0
            return f"{v:,.{d}f} {unit}"
    return f"{n:,.0f} B"


def large_unit(units: str = "GiB") -> tuple[str, int]:
    """("GiB", 2³⁰) or ("GB", 10⁹): the family's large unit, for axes that span decades (log scale)."""
    return _FAMILY[check_units(units)][0]


def size_unit(values, units: str = "GiB") -> tuple[str, int]:
    """One unit per magnitude: GiB (GB) when the largest |value| is at least 1 GiB (1 GB), else MiB
    (MB) — a tiny CI model's 0.75 MiB would read 0.00 GiB; a 24 GiB headroom would read 24,038.48 MiB."""
    (big, big_scale), (small, small_scale), _ = _FAMILY[check_units(units)]
    biggest = max((abs(v) for v in values if v is not None), default=0)
    return (big, big_scale) if biggest >= big_scale else (small, small_scale)


def unit_for(run: RunResult, units: str = "GiB") -> tuple[str, int]:
    """The unit of a run's memory categories and peaks (they add up, so they share one)."""
    return size_unit((c.peak_bytes for c in run.cases), units)


def _fmt(n, scale: int) -> str:
    return "—" if n is None else f"{n / scale:,.2f}"


# what each precision recipe keeps in which dtype (schema/scenario.py PRECISIONS)
_RECIPES = {"bf16": "weights, grads, activations and optimizer state in bfloat16",
            "fp32": "everything in float32",
            "mixed-bf16": "float32 master weights, grads and optimizer state; forward under bf16 autocast",
            "bf16-fp32-state": "bfloat16 weights, grads and activations; optimizer moments in float32"}


def title_line(run: RunResult) -> str:
    """model · batch × seq · precision recipe · attention (· activation checkpointing): what every chart
    and table is of. Files written before the recipe was recorded name only their dtype."""
    s = run.scenario
    ckpt = " · activation checkpointing" if s.get("checkpointing") else ""
    recipe = f"precision {s['precision']}" if s.get("precision") else s["dtype"]
    attention = f" · attention {s['attention']}" if s.get("attention") else ""
    return f"{s['model']} · batch {s['batch_size']} × seq {s['seq_len']} · {recipe}{attention}{ckpt}"


def recipe_note(run: RunResult) -> str:
    """What the precision recipe and the attention implementation mean (empty for files without them)."""
    s = run.scenario
    out = []
    if s.get("precision"):
        what = _RECIPES.get(s["precision"])
        out.append(f"precision recipe {s['precision']}" + (f" ({what})" if what else ""))
    if s.get("attention"):
        out.append(f"attention {s['attention']}" + (" (modelled as SDPA's flash kernel: the same saved tensors)"
                                                    if s["attention"] == "flash_attention_2" else ""))
    return "; ".join(out)


def rank_of(c) -> str:
    """The low-rank optimizer's (or LoRA's) rank, "—" for a full-rank one."""
    rank = (c.optimizer.get("hparams") or {}).get("rank")
    return "—" if rank is None else str(rank)


def code_paths(run: RunResult) -> list[tuple[str, str]]:
    """(label, code path) per case that records one: the implementation whose allocations were counted."""
    return [(c.label, c.code_path) for c in run.cases if getattr(c, "code_path", "")]


def checkpointing_note(run: RunResult) -> str:
    """Why `temp` grows under checkpointing (empty when it is off)."""
    if not run.scenario.get("checkpointing"):
        return ""
    return ("activation checkpointing is on: activations recomputed during backward are counted as "
            "temporaries (allocated outside forward), not as activations")


def provenance_line(run: RunResult, units: str = "GiB") -> str:
    gpu, memory = run.gpu["name"], human_bytes(run.gpu["memory_bytes"], units)
    if run.mode == "measured":
        where = run.environment.get("device_name") or run.device
        return f"measured on {where}; fits judged against {gpu} ({memory})"
    return (f"estimated (exact tensor sizes under FakeTensorMode, nothing allocated) for {gpu} "
            f"({memory}); a {human_bytes(512 * MiB, units, 0)} CUDA context is assumed when judging fit")


def _status(c) -> str:
    if c.status == "oom":
        return "OOM"
    if c.status == "error":
        return "error"
    return "fits" if c.fits else "too big"


def row_state(c) -> str:
    """"ok", or why the row deserves attention: "too big", "oom", "error"."""
    if c.status != "ok":
        return c.status
    return "ok" if c.fits or c.fits is None else "too big"


def _speed(c) -> str:
    if c.tokens_per_s is not None:
        mfu = f" ({c.mfu:.0%} MFU)" if c.mfu is not None else ""
        return f"{c.tokens_per_s:,.0f}{mfu}"
    if c.projected:
        return f"≤{c.projected['tokens_per_s_upper_bound']:,.0f} proj."
    return "n/a"


def _categories(run: RunResult) -> list[str]:
    """Every category, but the CUDA-only two (slack, context) only where a CUDA run measured them or a
    run recorded them otherwise (an estimate's simulated slack): every byte of the peak has a column."""
    cuda = run.mode == "measured" and run.device == "cuda"
    return [k for k in CATEGORIES if cuda or k not in ("allocator_slack", "context") or
            any(c.memory_bytes.get(k, 0) for c in run.cases)]


def summary_columns(run: RunResult, units: str = "GiB") -> list[tuple[str, str, list[str], int]]:
    """(name, unit, cells, group) per column after the optimizer: the categories and the peak in the
    run's unit, the headroom in its own (it is of the card's magnitude), then fit, speed, the low-rank
    rank, provenance."""
    unit, scale = unit_for(run, units)
    h_unit, h_scale = size_unit((c.headroom_bytes for c in run.cases), units)
    cols = [(SHORT[k], unit, [_fmt(c.memory_bytes.get(k, 0), scale) for c in run.cases],
             0 if k in ("weights", "grads", "moments", "quant_stats", "projectors", "history") else 1)
            for k in _categories(run)]
    cols += [("peak", unit, [_fmt(c.peak_bytes, scale) for c in run.cases], 2),
             ("fit", "", [_status(c) for c in run.cases], 2),
             ("headroom", h_unit, [_fmt(c.headroom_bytes, h_scale) for c in run.cases], 2),
             ("tokens/s", "", [_speed(c) for c in run.cases], 2),
             ("rank", "", [rank_of(c) for c in run.cases], 3),
             ("provenance", "", [c.provenance for c in run.cases], 3)]
    return cols


def summary_rows(run: RunResult, units: str = "GiB") -> tuple[list[str], list[list[str]]]:
    """Header (each size column with its unit) and rows, for Markdown and HTML."""
    cols = summary_columns(run, units)
    head = ["optimizer"] + [f"{n} ({u})" if u else n for n, u, _, _ in cols]
    rows = [[c.label] + [cells[i] for _, _, cells, _ in cols] for i, c in enumerate(run.cases)]
    return head, rows


def rich_summary(run: RunResult, units: str = "GiB"):
    """The run's table for the terminal: whole when the console is wide enough, else split so that
    every number stays readable (see report/fitted.py)."""
    from rich.markup import escape

    from ngl_profile.report.fitted import Column, FittedTable

    style = {"fits": "green", "too big": "red", "OOM": "bold red", "error": "yellow"}
    columns = []
    for name, unit, cells, group in summary_columns(run, units):
        plain = list(cells)
        if name == "fit":
            cells = [f"[{style[x]}]{x}[/]" for x in cells]
        elif name == "headroom":
            cells = [f"[red]{x}[/]" if x.startswith("-") else x for x in cells]
        else:
            cells = [escape(x) for x in cells]
        droppable = ""
        if name in ("provenance", "rank") and len(set(plain)) == 1:
            droppable = f"{name} ({plain[0]})"
        elif group < 2 and all(not c.memory_bytes.get(_CATEGORY[name], 0) for c in run.cases):
            droppable = f"{name} (0 bytes)"
        columns.append(Column(f"{name}\n{unit}" if unit else name, tuple(cells),
                              justify="left" if name == "provenance" else "right", group=group,
                              droppable=droppable))
    lead = Column("optimizer", tuple(c.label for c in run.cases), justify="left")
    s = run.scenario
    recipe = recipe_note(run)
    caption = provenance_line(run, units) + (f". Modelled: {recipe}." if recipe else "")
    caption += f". Note: {checkpointing_note(run)}." if checkpointing_note(run) else ""
    named = "" if s["name"] == s["model"] else f"{s['name']}: "  # "llama-7b: llama-7b · ..." says it twice
    return FittedTable(lead, columns, caption=caption,
                       title=f"{named}{title_line(run)} — sizes at the step's peak, {_units_said(run, units)}")


def _units_said(run: RunResult, units: str) -> str:
    """"in MiB (2²⁰ bytes); headroom in GiB (2³⁰ bytes)": the units a run's table uses."""
    unit = unit_for(run, units)[0]
    h_unit = size_unit((c.headroom_bytes for c in run.cases), units)[0]
    said = f"in {unit_note(unit)}"
    return said if h_unit == unit else f"{said}; headroom in {unit_note(h_unit)}"


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)



def fit_table(result):
    """What `fit` tried, in order: setting → estimated peak → verdict (an analysis.fit.FitResult)."""
    from rich.table import Table

    knobs = list(dict.fromkeys(k for p in result.probes for k in p.setting))  # every knob any probe set
    t = Table(title=f"fit: {result.label} on {result.gpu} ({human_bytes(result.gpu_memory_bytes)}), "
                    f"{result.scenario}", caption=f"{result.provenance}; +512 MiB CUDA context assumed",
              caption_justify="left")
    t.add_column("#", justify="right")
    for k in knobs:
        t.add_column(k, justify="right")
    t.add_column("peak GiB", justify="right")
    t.add_column("verdict")
    for i, p in enumerate(result.probes, 1):
        verdict = "[green]fits[/]" if p.fits else ("[red]too big[/]" if p.status == "ok" else f"[red]{p.status}[/]")
        best = result.best is not None and p.setting == result.best
        t.add_row(str(i), *(str(p.setting.get(k, "")) for k in knobs), f"{p.peak_bytes / GiB:,.2f}",
                  verdict + (" ← best" if best else ""))
    return t
