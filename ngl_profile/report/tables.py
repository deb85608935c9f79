"""Tables from finished records (never from a runner or an optimizer): rich for the terminal,
Markdown for files. One row per optimizer case."""
from __future__ import annotations

from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.results import RunResult

__all__ = ["SHORT", "gib", "size_unit", "summary_rows", "summary_columns", "row_state", "rich_summary",
           "markdown_table", "provenance_line", "unit_for", "title_line", "checkpointing_note", "fit_table"]

GiB, MiB = 1 << 30, 1 << 20
SHORT = {"weights": "weights", "grads": "grads", "moments": "moments", "quant_stats": "quant",
         "projectors": "proj", "history": "history", "activations": "activ", "temporaries": "temp",
         "allocator_slack": "slack", "context": "context"}
_CATEGORY = {short: k for k, short in SHORT.items()}


def gib(n) -> str:
    return "—" if n is None else f"{n / GiB:,.2f}"


def size_unit(values) -> tuple[str, int]:
    """One unit per magnitude: GiB when the largest |value| is at least 1 GiB, else MiB (a tiny CI
    model's 0.75 MiB would read 0.00 GiB; a 24 GiB headroom would read 24,038.48 MiB)."""
    biggest = max((abs(v) for v in values if v is not None), default=0)
    return ("GiB", GiB) if biggest >= GiB else ("MiB", MiB)


def unit_for(run: RunResult) -> tuple[str, int]:
    """The unit of a run's memory categories and peaks (they add up, so they share one)."""
    return size_unit(c.peak_bytes for c in run.cases)


def _fmt(n, scale: int) -> str:
    return "—" if n is None else f"{n / scale:,.2f}"


def title_line(run: RunResult) -> str:
    """model · batch × seq · dtype (· activation checkpointing): what every chart and table is of."""
    s = run.scenario
    ckpt = " · activation checkpointing" if s.get("checkpointing") else ""
    return f"{s['model']} · batch {s['batch_size']} × seq {s['seq_len']} · {s['dtype']}{ckpt}"


def checkpointing_note(run: RunResult) -> str:
    """Why `temp` grows under checkpointing (empty when it is off)."""
    if not run.scenario.get("checkpointing"):
        return ""
    return ("activation checkpointing is on: activations recomputed during backward are counted as "
            "temporaries (allocated outside forward), not as activations")


def provenance_line(run: RunResult) -> str:
    gpu = run.gpu["name"]
    if run.mode == "measured":
        where = run.environment.get("device_name") or run.device
        return f"measured on {where}; fits judged against {gpu} ({gib(run.gpu['memory_bytes'])} GiB)"
    return (f"estimated (exact tensor sizes under FakeTensorMode, nothing allocated) for {gpu} "
            f"({gib(run.gpu['memory_bytes'])} GiB); a 512 MiB CUDA context is assumed when judging fit")


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
    return [c for c in CATEGORIES if run.mode == "measured" and run.device == "cuda" or
            c not in ("allocator_slack", "context")]


def summary_columns(run: RunResult) -> list[tuple[str, str, list[str], int]]:
    """(name, unit, cells, group) per column after the optimizer: the categories and the peak in the
    run's unit, the headroom in its own (it is of the card's magnitude), then fit, speed, provenance."""
    unit, scale = unit_for(run)
    h_unit, h_scale = size_unit(c.headroom_bytes for c in run.cases)
    cols = [(SHORT[k], unit, [_fmt(c.memory_bytes.get(k, 0), scale) for c in run.cases],
             0 if k in ("weights", "grads", "moments", "quant_stats", "projectors", "history") else 1)
            for k in _categories(run)]
    cols += [("peak", unit, [_fmt(c.peak_bytes, scale) for c in run.cases], 2),
             ("fit", "", [_status(c) for c in run.cases], 2),
             ("headroom", h_unit, [_fmt(c.headroom_bytes, h_scale) for c in run.cases], 2),
             ("tokens/s", "", [_speed(c) for c in run.cases], 2),
             ("provenance", "", [c.provenance for c in run.cases], 3)]
    return cols


def summary_rows(run: RunResult) -> tuple[list[str], list[list[str]]]:
    """Header (each size column with its unit) and rows, for Markdown and HTML."""
    cols = summary_columns(run)
    head = ["optimizer"] + [f"{n} ({u})" if u else n for n, u, _, _ in cols]
    rows = [[c.label] + [cells[i] for _, _, cells, _ in cols] for i, c in enumerate(run.cases)]
    return head, rows


def rich_summary(run: RunResult):
    """The run's table for the terminal: whole when the console is wide enough, else split so that
    every number stays readable (see report/fitted.py)."""
    from rich.markup import escape

    from ngl_profile.report.fitted import Column, FittedTable

    style = {"fits": "green", "too big": "red", "OOM": "bold red", "error": "yellow"}
    columns = []
    for name, unit, cells, group in summary_columns(run):
        plain = list(cells)
        if name == "fit":
            cells = [f"[{style[x]}]{x}[/]" for x in cells]
        elif name == "headroom":
            cells = [f"[red]{x}[/]" if x.startswith("-") else x for x in cells]
        else:
            cells = [escape(x) for x in cells]
        droppable = ""
        if name == "provenance" and len(set(plain)) == 1:
            droppable = f"provenance ({plain[0]})"
        elif group < 2 and all(not c.memory_bytes.get(_CATEGORY[name], 0) for c in run.cases):
            droppable = f"{name} (0 bytes)"
        columns.append(Column(f"{name}\n{unit}" if unit else name, tuple(cells),
                              justify="left" if name == "provenance" else "right", group=group,
                              droppable=droppable))
    lead = Column("optimizer", tuple(c.label for c in run.cases), justify="left")
    s = run.scenario
    caption = provenance_line(run) + (f". Note: {checkpointing_note(run)}." if checkpointing_note(run) else "")
    named = "" if s["name"] == s["model"] else f"{s['name']}: "  # "llama-7b: llama-7b · ..." says it twice
    return FittedTable(lead, columns, caption=caption, title=f"{named}{title_line(run)} — sizes at the step's peak")


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)



def fit_table(result):
    """What `fit` tried, in order: setting → estimated peak → verdict (an analysis.fit.FitResult)."""
    from rich.table import Table

    knobs = list(dict.fromkeys(k for p in result.probes for k in p.setting))  # every knob any probe set
    t = Table(title=f"fit: {result.label} on {result.gpu} ({result.gpu_memory_bytes / GiB:,.2f} GiB), "
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
