"""report.md of a `train` run, from its finished record: the verdict sentence, the protocol, the
data, one row per case (held-out loss with its spread, lr and where it came from, memory, speed),
the learning-rate sweeps, and the charts. Nothing here trains or measures."""
from __future__ import annotations

from pathlib import Path

from ngl_profile.quality.verdict import pareto_front, points, verdict
from ngl_profile.zoo.gpus import GiB

__all__ = ["render_report", "write_report"]


def _loss(q: dict) -> str:
    stats = q.get("heldout_loss_stats")
    if not stats:
        return "diverged" if q.get("diverged") else "—"
    if q.get("seeds", 1) == 1:
        return f"{stats['median']:.4f}"
    return (f"{stats['median']:.4f} [{stats['q1']:.4f}–{stats['q3']:.4f}] "
            f"(min {stats['min']:.4f}, max {stats['max']:.4f})")


def _lr_source(q: dict) -> str:
    if q.get("lr_sweep"):
        return "tuned, at its grid's edge" if q.get("lr_at_grid_edge") else "tuned"
    return "its twin's" if q.get("lr_source", "").startswith("its twin") else "fixed"


def _grids(grid) -> str:
    if isinstance(grid, dict):
        return "; ".join(f"{'every other case' if k == '*' else k}: {v}" for k, v in grid.items()) or "(none)"
    return str(grid) if grid else "(none)"


def _case_rows(run) -> list[str]:
    rows = ["| case | optimizer | settings | lr | held-out loss, median [IQR] | peak GiB (tensors) | history MiB | "
            "tokens/s | step ms (optimizer) |", "|---|---|---|---|---|---|---|---|---|"]
    peaks = {p.label: p.peak_bytes for p in points(run)}
    for c in run.cases:
        q = c.quality or {}
        hp = c.optimizer.get("hparams", {})
        settings = ", ".join(f"{k} {hp[k]}" for k in ("rank", "history_size", "history_dtype", "damping",
                                                      "update_proj_gap", "scale") if k in hp) or "—"
        lr = f"{q.get('lr', hp.get('lr')):g} ({_lr_source(q)})"
        tps = f"{c.tokens_per_s:,.0f}" if c.tokens_per_s else "—"
        step = c.step_time_s.get("total")
        opt = c.step_time_s.get("optimizer")
        ms = f"{step * 1e3:,.1f} ({opt * 1e3:,.1f})" if step and opt else "—"
        official = " — official formula" if "official" in q.get("formula", "") else ""
        rows.append(f"| {c.label} | {c.optimizer['name']}{official}"
                    f" | {settings} | {lr} | {_loss(q)} | {peaks[c.label] / GiB:.4g} | "
                    f"{c.memory_bytes.get('history', 0) / (1 << 20):,.2f} | {tps} | {ms} |")
    return rows


def _memory_rows(run) -> list[str]:
    """Memory by category at the peak, MiB (estimated), only the categories some case holds."""
    from ngl_profile.schema.categories import CATEGORIES

    shown = [k for k in CATEGORIES if k not in ("allocator_slack", "context")
             and any(c.memory_bytes.get(k, 0) for c in run.cases)]
    rows = ["| case | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for c in run.cases:
        cells = " | ".join(f"{c.memory_bytes.get(k, 0) / (1 << 20):,.2f}" for k in shown)
        rows.append(f"| {c.label} | {cells} |")
    return rows


def _sweeps(run) -> list[str]:
    rows = []
    for c in run.cases:
        sweep = (c.quality or {}).get("lr_sweep") or []
        if sweep:
            cells = ", ".join(f"{s['lr']:g} → {s['tune_loss']:.4f}" if s["tune_loss"] == s["tune_loss"]
                              else f"{s['lr']:g} → diverged" for s in sweep)
            edge = "; at the grid's edge: the best lr may lie outside it" if c.quality.get("lr_at_grid_edge") else ""
            rows.append(f"- {c.label}: {cells} (chosen {c.quality['lr']:g}{edge})")
    return rows


def render_report(run, wall_s: float | None = None) -> str:
    scn, q = run.scenario, run.scenario.get("quality", {})
    corpus, base = q.get("corpus", {}), q.get("baselines", {})
    pts = points(run)
    env = run.environment
    tokens = q.get("steps", 0) * scn["batch_size"] * scn["seq_len"]
    lines = [f"# Quality: {scn['name']} — does the window pay for itself?", "",
             "**Verdict:** " + verdict(pts), "",
             "Pareto front (no other case has both a lower median held-out loss and a smaller peak): "
             + (", ".join(p.label for p in pareto_front(pts)) or "—") + ".", "",
             "![loss curves](loss_curves.png)", "", "![held-out loss vs peak memory](pareto.png)", "",
             "## Cases", "", *_case_rows(run), "",
             f"Held-out loss: nats per byte on the test split after the last step (uniform over 256 bytes: "
             f"{base.get('uniform_loss', 0):.4f}; the training bytes' unigram frequencies: "
             f"{base.get('unigram_loss', 0):.4f}). Its median and interquartile range are over "
             f"{q.get('seeds')} seed{'s' if q.get('seeds') != 1 else ''} (quartiles by linear interpolation, as for "
             f"timings). Peak: the tensors live at "
             f"the step's peak (the simulated allocator's slack, in results.json, left out). Peak memory and its "
             f"categories are **estimated** (ngl_profile.estimate: FakeTensorMode, exact sizes, {run.gpu['name']}'s "
             f"code paths, {scn.get('precision')}); loss, tokens/s and step times are **measured** on {run.device} "
             f"({env.get('device_name', '?')}, {env.get('cpu_count', '?')} CPUs, torch {env.get('torch', '?')}).", "",
             "Memory at the peak by category (MiB, estimated; every byte of the peak in exactly one):", "",
             *_memory_rows(run), "",
             "## Protocol", "",
             f"- Model: {scn['model']} ({(scn.get('model_config') or {}).get('parameters', 0) / 1e6:.2f} M parameters), "
             f"byte-level (vocab 256, no special tokens), {scn.get('precision')}, attention {scn.get('attention')}.",
             f"- Every case: {q.get('steps')} steps of batch {scn['batch_size']} × {scn['seq_len']} bytes = "
             f"{tokens:,} training tokens (equal for all); seed k gives every case the same initialisation and "
             "the same batches.",
             f"- Schedule: linear warm-up over {q.get('warmup_fraction', 0):.0%} of the steps, then cosine to "
             f"{q.get('min_lr_ratio')} × the peak lr (GaLore's torchrun_main \"cosine\" schedule).",
             "- Learning rate: a case's own where it sets one; else the best of its grid "
             f"({_grids(q.get('lr_grid'))}) after {q.get('tune_steps') or q.get('steps')} steps of seed 0 (the same "
             "schedule, compressed), judged on the tune split (never on the test split reported here). An "
             "official-formula row takes its twin's lr, so that only the formula differs.",
             f"- Held-out loss every {q.get('eval_every')} steps on the first {q.get('eval_sequences')} windows "
             "of the test split (the same bytes for every run); evaluation time is not in the wall time.",
             "- Official formula rows: the zoo's GaLore groups with the official code's printed correction "
             "g̃ = (g − G z)/λ, S z = Gᵀg, in float32 (ngl_profile/quality/official.py), beside ngl_profile's "
             "own subtraction-free form of the same quantity; its memory is the official layout's (a list of "
             "float32 columns, stacked every step).", ""]
    sweeps = _sweeps(run)
    if sweeps:
        lines += ["## Learning-rate sweeps (tune-split loss)", "", *sweeps, ""]
    lines += ["## Data", "",
              f"{corpus.get('source')}: {corpus.get('files')} files ({corpus.get('first_file')} … "
              f"{corpus.get('last_file')}), {corpus.get('bytes', 0):,} bytes from {corpus.get('directory')} "
              f"(Python {corpus.get('python')}); every {corpus.get('heldout_every')}th file held out: "
              f"train {corpus.get('train_bytes', 0):,} B, tune {corpus.get('tune_bytes', 0):,} B, test "
              f"{corpus.get('test_bytes', 0):,} B; sha256 {corpus.get('sha256', '')[:16]}….", ""]
    if wall_s is not None:
        lines += [f"Wall time of the whole run: {wall_s / 60:.1f} min on {env.get('device_name', run.device)} "
                  f"({env.get('cpu_count', '?')} CPUs), {run.created_utc}.", ""]
    return "\n".join(lines)


def write_report(run, out: Path, wall_s: float | None = None) -> list[Path]:
    from ngl_profile.quality.charts import loss_curves, pareto

    out = Path(out)
    paths = [loss_curves(run, out), pareto(run, out)]
    md = out / "report.md"
    md.write_text(render_report(run, wall_s))
    return [md, *paths]
