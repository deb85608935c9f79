"""The CLI's commands: each takes parsed arguments, prints, and returns an exit code."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["run", "list_things", "fit", "report", "compare", "check", "train", "CASE_FAILED"]

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


def _with_recipe(scn, args):
    """The scenario with the CLI's --precision, --attention, --code-paths and --rank applied."""
    from ngl_profile.schema.scenario import OptimizerCase
    from ngl_profile.zoo.optimizers import OPTIMIZERS

    scn = scn.with_overrides(precision=getattr(args, "precision", None), attention=getattr(args, "attention", None),
                             code_paths=getattr(args, "code_paths", None))
    rank = getattr(args, "rank", None)
    if rank is None:
        return scn
    cases = [OptimizerCase(name=c.name, label=c.label, hparams={**c.hparams, "rank": rank})
             if OPTIMIZERS[c.name].low_rank else c for c in scn.optimizers]
    return scn.with_overrides(optimizers=cases)


def run(args) -> int:
    from ngl_profile.engine.runner import default_out_dir, output_lock, plan
    from ngl_profile.schema.presets import load_scenario
    from ngl_profile.zoo.optimizers import OPTIMIZERS

    scn = load_scenario(args.scenario)
    # --attention with --model: a model without SDPA is refused before the recipe is applied
    scn = scn.with_overrides(gpu=args.gpu, mode=args.mode, model=getattr(args, "model", None),
                             attention=getattr(args, "attention", None),
                             parallelism=getattr(args, "parallelism", None), world_size=getattr(args, "world_size", None))
    if args.optimizers:
        scn = scn.select(args.optimizers)
    scn = _with_recipe(scn, args)
    if not scn.optimizers:
        raise ValueError(f"{scn.source}: no [[optimizers]] to run")
    for c in scn.optimizers:
        OPTIMIZERS[c.name].check_available()
    if args.jobs is not None and not 1 <= args.jobs <= 64:
        raise ValueError(f"--jobs must be in [1, 64]; got {args.jobs}")
    sweep = None
    if getattr(args, "sweep", None):
        from ngl_profile.schema.sweep import parse_sweep

        sweep = parse_sweep(args.sweep, scn)  # every value validated before anything runs
    as_json = getattr(args, "json", False)
    if as_json and sweep is not None:
        raise ValueError("--json prints one run's results object; it does not combine with --sweep")
    mode, device = plan(scn, scn.mode)
    out = args.out or default_out_dir(scn)
    if sweep is not None:
        out = args.out or out.with_name(f"{out.name}-{sweep.axis}-sweep")
        return _run_sweep(args, sweep, mode, device, out)
    _check_writable(out)
    with output_lock(out, force=args.force):
        console = _console()
        if as_json:  # stdout carries the JSON alone
            from rich.console import Console

            console = Console(stderr=True, width=console.width)
        console.print(f"[bold]{scn.name}[/]: {len(scn.optimizers)} optimizer(s), {mode} on {device}, target "
                      f"{scn.gpu} → {out}")
        result = _run_with_progress(console, scn, mode, device, out, args.jobs)
        from ngl_profile.report.tables import rich_summary

        console.print(rich_summary(result, args.units))
        from ngl_profile.report.ranks import is_distributed

        if is_distributed(result):  # DDP/FSDP2: every rank's figures (report/ranks.py)
            from ngl_profile.report.ranks import rich_ranks

            console.print(rich_ranks(result, args.units))
        for c in result.cases:
            if c.status != "ok":
                console.print(f"[yellow]{c.label}: {c.status}: {c.message}[/]")
        console.print(f"results: {out / 'results.json'}")
        if not args.no_report:
            from ngl_profile.report.render import render_report

            files = render_report([result], out, args.units)
            if is_distributed(result):
                from ngl_profile.report.ranks import per_rank, ranks_markdown

                chart = per_rank(result, out / "per_rank.png", args.units)
                (out / "ranks.md").write_text(ranks_markdown(result, args.units, chart and chart.name))
                files += [out / "ranks.md"] + ([chart] if chart else [])
            console.print(f"report: {out / 'report.md'} ({len(files)} files)")
    if as_json:
        import sys

        sys.stdout.write((out / "results.json").read_text())
        sys.stdout.flush()
    # an OOM is a result; a case that crashed is not: say so in the exit code (see cli.py)
    return CASE_FAILED if any(c.status == "error" for c in result.cases) else 0


def _run_sweep(args, sweep, mode, device, out: Path) -> int:
    """One normal run per value, each into out/AXIS-V/; sweep.md rewritten after each, so an
    interrupted sweep keeps a table of what finished; the chart once all have run."""
    from ngl_profile.engine.runner import output_lock
    from ngl_profile.report.sweep import axis_sweep, sweep_markdown, sweep_rows

    _check_writable(out)
    subs = {v: out / sweep.sub_dir(v) for v in sweep.values}
    if not args.force:  # refused before the first value runs, not after it
        for sub in subs.values():
            if (sub / "results.json").exists():
                raise OSError(f"{sub} already holds a run's results.json; choose another --out, or pass --force")
    console = _console()
    runs, done, crashed = [], {}, False
    with output_lock(out, force=args.force):
        for i, (v, scn) in enumerate(zip(sweep.values, sweep.scenarios), 1):
            sub = subs[v]
            with output_lock(sub, force=args.force):
                console.print(f"[bold]{scn.name}[/] {sweep.axis}={v} ({i}/{len(sweep.values)}): "
                              f"{len(scn.optimizers)} optimizer(s), {mode} on {device}, target {scn.gpu} → {sub}")
                result = _run_with_progress(console, scn, mode, device, sub, args.jobs)
                for c in result.cases:
                    if c.status != "ok":
                        console.print(f"[yellow]{c.label}: {c.status}: {c.message}[/]")
                crashed |= any(c.status == "error" for c in result.cases)
                if not args.no_report:
                    from ngl_profile.report.render import render_report

                    render_report([result], sub, args.units)
            runs.append(result)
            done[v] = sub.name
            (out / "sweep.md").write_text(sweep_markdown(runs, sweep.axis, list(sweep.values), done,
                                                         units=args.units))
        chart = None if args.no_report else axis_sweep(runs, sweep.axis, out / "sweep.png", args.units)
        if chart is not None:
            (out / "sweep.md").write_text(sweep_markdown(runs, sweep.axis, list(sweep.values), done, chart.name,
                                                         args.units))
    from rich.table import Table

    head, rows, unit = sweep_rows(runs, sweep.axis, args.units)
    t = Table(title=f"peak memory ({unit}) vs {sweep.axis}, target {runs[0].gpu['name']}; ✗ does not fit")
    for j, h in enumerate(head):
        t.add_column(h, justify="left" if j == 0 else "right")
    for row in rows:
        t.add_row(*row)
    console.print(t)
    console.print(f"sweep: {out / 'sweep.md'}" + (f", chart {chart}" if chart is not None else ""))
    return CASE_FAILED if crashed else 0


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
        from ngl_profile.zoo.models import MODELS, parameter_count

        for col in ("name", "architecture", "parameters", "default rank", "description"):
            t.add_column(col, no_wrap=col in ("name", "preset"))  # names stay whole, to copy
        for m in MODELS.values():
            n = parameter_count(m)  # built on the meta device from the config: exact, nothing allocated
            t.add_row(m.name, m.architecture, f"{n / 1e9:,.2f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M",
                      str(m.default_rank), m.description)
    elif what == "gpus":
        from ngl_profile.zoo.gpus import GPUS, SIZE_HINT, gpu_names

        t.caption, t.caption_justify = f"--gpu takes one of these names or aliases; {SIZE_HINT}", "left"
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

    scn = _with_recipe(load_scenario(args.scenario).with_overrides(gpu=args.gpu), args)
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
    files = render_report(runs, out, args.units)
    console = _console()
    for f in files:
        console.print(str(f))
    return 0


def compare(args) -> int:
    from ngl_profile.analysis.compare import comparison
    from ngl_profile.report.check_table import print_comparison
    from ngl_profile.schema.results import load_results

    runs = [load_results(p) for p in args.results]
    print_comparison(comparison(runs), markdown=args.md, console=_console(), units=args.units)
    return 0


def check(args) -> int:
    from ngl_profile.analysis.regress import check_results
    from ngl_profile.report.check_table import print_check

    outcome = check_results(args.results, args.baseline, thresholds=args.thresholds,
                            update_baseline=args.update_baseline, export_benchmark_json=args.export_benchmark_json)
    print_check(outcome, _console())
    return outcome.exit_code  # 1 only for a regression; refusals raise (exit 2), bugs exit 4 in cli.py


def train(args) -> int:
    """`ngl-profile train`: quality mode (ngl_profile/quality/command.py)."""
    from ngl_profile.quality.command import train_command

    return train_command(args)
