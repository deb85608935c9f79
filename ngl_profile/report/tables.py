"""Tables from finished records (never from a runner or an optimizer): rich for the terminal,
Markdown for files. One row per optimizer case."""
from __future__ import annotations

from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.results import RunResult

__all__ = ["SHORT", "gib", "summary_rows", "rich_summary", "markdown_table", "provenance_line", "unit_for"]

GiB = 1 << 30
SHORT = {"weights": "weights", "grads": "grads", "moments": "moments", "quant_stats": "quant",
         "projectors": "proj", "history": "history", "activations": "activ", "temporaries": "temp",
         "allocator_slack": "slack", "context": "context"}


def gib(n) -> str:
    return "—" if n is None else f"{n / GiB:.2f}"


def unit_for(run: RunResult) -> tuple[str, int]:
    """GiB for real models; MiB when every peak is under 1 GiB (a tiny CI model reads 0.00 GiB)."""
    biggest = max((c.peak_bytes for c in run.cases), default=0)
    return ("GiB", GiB) if biggest >= GiB else ("MiB", 1 << 20)


def _fmt(n, scale: int) -> str:
    return "—" if n is None else f"{n / scale:.2f}"


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


def _speed(c) -> str:
    if c.tokens_per_s is not None:
        mfu = f" ({c.mfu:.0%} MFU)" if c.mfu is not None else ""
        return f"{c.tokens_per_s:,.0f}{mfu}"
    if c.projected:
        return f"≤{c.projected['tokens_per_s_upper_bound']:,.0f} proj."
    return "n/a"


def summary_rows(run: RunResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows; sizes in the unit `unit_for(run)` names."""
    _, scale = unit_for(run)
    cats = [c for c in CATEGORIES if run.mode == "measured" and run.device == "cuda" or
            c not in ("allocator_slack", "context")]
    head = ["optimizer"] + [SHORT[c] for c in cats] + ["peak", "fit", "headroom", "tokens/s", "provenance"]
    rows = []
    for c in run.cases:
        rows.append([c.label] + [_fmt(c.memory_bytes.get(k, 0), scale) for k in cats]
                    + [_fmt(c.peak_bytes, scale), _status(c), _fmt(c.headroom_bytes, scale), _speed(c),
                       c.provenance])
    return head, rows


def rich_summary(run: RunResult):
    from rich.table import Table

    head, rows = summary_rows(run)
    t = Table(title=f"{run.scenario['name']}: {run.scenario['model']}, batch {run.scenario['batch_size']} × "
                    f"seq {run.scenario['seq_len']}, {run.scenario['dtype']} — {unit_for(run)[0]} at the step's peak",
              caption=provenance_line(run), caption_justify="left")
    for i, h in enumerate(head):
        t.add_column(h, justify="left" if i == 0 or h == "provenance" else "right", no_wrap=i == 0)
    style = {"fits": "green", "too big": "red", "OOM": "bold red", "error": "yellow"}
    for c, row in zip(run.cases, rows):
        fit_col = head.index("fit")
        row = list(row)
        row[fit_col] = f"[{style[row[fit_col]]}]{row[fit_col]}[/]"
        t.add_row(*row)
    return t


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)



def fit_table(result):
    """What `fit` tried, in order: setting → estimated peak → verdict (an analysis.fit.FitResult)."""
    from rich.table import Table

    knobs = list(result.probes[0].setting) if result.probes else []
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
