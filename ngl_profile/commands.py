"""The CLI's commands: each takes parsed arguments, prints, and returns an exit code."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["run", "list_things", "fit", "report", "compare", "check", "CASE_FAILED"]

CASE_FAILED = 3  # `run` finished, but at least one case crashed (recorded in results.json)


def _console():
    """A terminal's own width; piped: $COLUMNS when set, else the terminal stderr still shows (`| less`,
    `| tee log`), else 220 (a CI log). Tables fit whichever width this is (report/fitted.py)."""
    import sys

    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return Console(width=int(columns))
    try:
        return Console(width=os.get_terminal_size(sys.stderr.fileno()).columns)
    except (OSError, ValueError, AttributeError):  # no terminal at all (or stderr replaced)
        return Console(width=220)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create output directory {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise OSError(f"output directory {out} is not writable")


def run(args) -> int:
    from ngl_profile.engine.runner import default_out_dir, output_lock, plan
    from ngl_profile.schema.presets import load_scenario
    from ngl_profile.zoo.optimizers import OPTIMIZERS

    scn = load_scenario(args.scenario)
    scn = scn.with_overrides(gpu=args.gpu, mode=args.mode)
    if args.optimizers:
        scn = scn.select(args.optimizers)
    if not scn.optimizers:
        raise ValueError(f"{scn.source}: no [[optimizers]] to run")
    for c in scn.optimizers:
        OPTIMIZERS[c.name].check_available()
    if args.jobs is not None and not 1 <= args.jobs <= 64:
        raise ValueError(f"--jobs must be in [1, 64]; got {args.jobs}")
    mode, device = plan(scn, scn.mode)
    out = args.out or default_out_dir(scn)
    _check_writable(out)
    with output_lock(out, force=args.force):
        console = _console()
        console.print(f"[bold]{scn.name}[/]: {len(scn.optimizers)} optimizer(s), {mode} on {device}, target "
                      f"{scn.gpu} → {out}")
        result = _run_with_progress(console, scn, mode, device, out, args.jobs)
        from ngl_profile.report.tables import rich_summary

        console.print(rich_summary(result))
        for c in result.cases:
            if c.status != "ok":
                console.print(f"[yellow]{c.label}: {c.status}: {c.message}[/]")
        console.print(f"results: {out / 'results.json'}")
        if not args.no_report:
            from ngl_profile.report.render import render_report

            files = render_report([result], out)
            console.print(f"report: {out / 'report.md'} ({len(files)} files)")
    # an OOM is a result; a case that crashed is not: say so in the exit code (see cli.py)
    return CASE_FAILED if any(c.status == "error" for c in result.cases) else 0


def _run_with_progress(console, scn, mode, device, out, jobs):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ngl_profile.engine.runner import run_scenario

    steps = 2 + (scn.warmup + scn.steps if mode == "measured" else 0)
    with Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        tasks = {}

        def on_event(label: str, ev: dict) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=steps, status="queued")
            t = tasks[label]
            if ev["event"] == "step":
                done = ev["i"] + {"tracked": 0, "warmup": 2, "timed": 2 + scn.warmup}[ev["kind"]]
                progress.update(t, completed=done - 1, status=f"{ev['kind']} step {ev['i']}/{ev['n']}")
            elif ev["event"] == "done":
                progress.update(t, completed=steps, status=ev["status"])

        return run_scenario(scn, mode, device, out, on_event=on_event, jobs=jobs)


def list_things(what: str) -> int:
    from rich.table import Table

    t = Table()
    if what == "models":
        from ngl_profile.zoo.models import MODELS, approx_parameters

        for col in ("name", "family", "parameters", "default rank", "description"):
            t.add_column(col, no_wrap=col in ("name", "preset"))  # names stay whole, to copy
        for m in MODELS.values():
            t.add_row(m.name, m.family, f"{approx_parameters(m.name) / 1e6:,.0f}M", str(m.default_rank),
                      m.description)
    elif what == "gpus":
        from ngl_profile.zoo.gpus import GPUS, gpu_names

        for col in ("name", "memory GiB", "bf16 TFLOP/s", "GB/s", "aliases", "source"):
            t.add_column(col, no_wrap=col in ("name", "preset"))  # names stay whole, to copy
        for name in gpu_names():
            g = GPUS[name]
            t.add_row(g.name, f"{g.memory_gib:.1f}", f"{g.bf16_tflops:g}", f"{g.bandwidth_gbs:g}",
                      ", ".join(g.aliases), g.source)
    elif what == "optimizers":
        from ngl_profile.zoo.optimizers import OPTIMIZERS

        for col in ("name", "description", "hyperparameters"):
            t.add_column(col, no_wrap=col in ("name", "preset"))  # names stay whole, to copy
        for spec in OPTIMIZERS.values():
            t.add_row(spec.name, spec.description, ", ".join(spec.hparams))
    else:
        from ngl_profile.schema.presets import load_scenario, preset_names, scenario_dir

        for col in ("preset", "model", "gpu", "optimizers"):
            t.add_column(col, no_wrap=col in ("name", "preset"))  # names stay whole, to copy
        for name in preset_names():
            s = load_scenario(str(scenario_dir() / f"{name}.toml"))
            t.add_row(name, s.model, s.gpu, ", ".join(c.label for c in s.optimizers))
    _console().print(t)
    return 0


def fit(args) -> int:
    from ngl_profile.analysis.fit import check_knobs, search, write_fit
    from ngl_profile.engine.runner import output_lock
    from ngl_profile.report.tables import fit_table
    from ngl_profile.schema.presets import load_scenario
    from ngl_profile.schema.scenario import OptimizerCase
    from ngl_profile.zoo.gpus import get_gpu

    scn = load_scenario(args.scenario).with_overrides(gpu=args.gpu)
    check_knobs(args.vary)
    wanted = [c for c in scn.optimizers if args.optimizer in (c.label, c.name)]
    case = wanted[0] if wanted else OptimizerCase(name=args.optimizer)
    out = args.out or Path("reports") / f"fit-{scn.name}-{case.name}-{get_gpu(scn.gpu).name}"
    _check_writable(out)  # before the search, not after minutes of it
    console = _console()
    with output_lock(out, force=True):
        console.print(f"[bold]fit[/] {case.label} on {scn.gpu}: {scn.name}, varying {', '.join(args.vary)} "
                      "(each probe an estimated run)")

        def on_probe(p) -> None:
            verdict = "[green]fits[/]" if p.fits else f"[red]{'does not fit' if p.status == 'ok' else p.status}[/]"
            shown = ", ".join(f"{k}={v}" for k, v in p.setting.items())
            console.print(f"  {shown} → {p.peak_bytes / 2**30:,.2f} GiB {verdict}")

        result = search(scn, case, args.vary, on_probe=on_probe)
        write_fit(result, out / "fit.json")
    if result.not_varied:
        console.print(f"[yellow]{case.name} has no {', '.join(result.not_varied)}: not varied[/]")
    console.print(fit_table(result))
    if result.crashed is not None:
        shown = ", ".join(f"{k}={v}" for k, v in result.crashed.setting.items())
        console.print(f"[red]the estimate at {shown} crashed: {result.crashed.message}; the search stopped there[/]")
        console.print(f"fit.json: {out / 'fit.json'}")
        return CASE_FAILED
    if result.best is None:
        console.print(f"[red]no value of {result.failed_knob} fits {result.gpu}[/]")
    else:
        shown = ", ".join(f"{k} = {v}" for k, v in result.best.items())
        console.print(f"[bold green]{case.label} on {result.gpu}: {shown}[/] — {result.provenance} peak "
                      f"{result.best_peak_bytes / 2**30:,.2f} GiB of {result.gpu_memory_bytes / 2**30:,.2f} GiB"
                      + (" (+512 MiB assumed CUDA context)" if result.confirmed is None else ""))
        if result.confirmed is None:
            console.print("no CUDA GPU at least as large as the target here: the answer is estimated, "
                          "not confirmed by a measured run")
        elif not result.confirmed_ok:
            c = result.confirmed
            console.print(f"[red]the measured run on {c.get('device_name')} did not confirm it: {c.get('status')}, "
                          f"fits={c.get('fits')} {c.get('message', '')}[/]")
    console.print(f"fit.json: {out / 'fit.json'}")
    return 0


def report(args) -> int:
    from ngl_profile.report.render import render_report
    from ngl_profile.schema.results import ResultsError, load_many, load_results

    # one file: it must load; several (a sweep): a corrupt one is skipped with a warning
    runs = [load_results(args.results[0])] if len(args.results) == 1 else load_many(args.results)
    if not runs:
        raise ResultsError("none of the results files could be read")
    first = args.results[0]
    if args.out is not None:
        out = args.out
    elif len(args.results) == 1:
        out = first if first.is_dir() else first.parent  # a run's own report, re-rendered in place
    else:
        # several runs: a new folder, never over the first run's own report
        from datetime import datetime, timezone

        out = Path("reports") / f"combined-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    _check_writable(out)
    files = render_report(runs, out)
    console = _console()
    for f in files:
        console.print(str(f))
    return 0


def compare(args) -> int:
    from ngl_profile.analysis.compare import comparison
    from ngl_profile.report.check_table import print_comparison
    from ngl_profile.schema.results import load_results

    runs = [load_results(p) for p in args.results]
    print_comparison(comparison(runs), markdown=args.md, console=_console())
    return 0


def check(args) -> int:
    from ngl_profile.analysis.regress import check_results
    from ngl_profile.report.check_table import print_check

    outcome = check_results(args.results, args.baseline, thresholds=args.thresholds,
                            update_baseline=args.update_baseline, export_benchmark_json=args.export_benchmark_json)
    print_check(outcome, _console())
    return outcome.exit_code  # 1 only for a regression; refusals raise (exit 2), bugs exit 4 in cli.py
