"""ngl-profile command line. Errors become exit codes here and nowhere else:
0 ok, 1 a regression found by `check`, 2 bad input (one line, no traceback), 130 interrupted.
Heavy imports (torch, transformers, matplotlib) happen inside the commands: `--help` is instant."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


class UsageError(ValueError):
    """Bad input found by the CLI itself."""


def _csv(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ngl-profile", description="Memory and throughput profiler for "
                                "Natural GaLore and the optimizers it is compared with.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="profile a scenario: every optimizer, memory by category, tokens/s")
    r.add_argument("scenario", help="preset (7b, 1b, tiny, ...: see `list scenarios`) or a .toml file")
    r.add_argument("--gpu", help="target GPU (see `list gpus`); overrides the scenario")
    r.add_argument("--optimizers", type=_csv, help="comma-separated subset (labels or names)")
    r.add_argument("--mode", choices=("auto", "measured", "estimated"), help="default: the scenario's (auto)")
    r.add_argument("--out", type=Path, help="output directory (default reports/<scenario>-<gpu>-<UTC time>/)")
    r.add_argument("--jobs", type=int, help="cases at a time (default: 2 estimated, 1 measured)")
    r.add_argument("--no-report", action="store_true", help="do not render charts and report files")

    ls = sub.add_parser("list", help="list models, gpus, optimizers or scenarios")
    ls.add_argument("what", choices=("models", "gpus", "optimizers", "scenarios"))

    f = sub.add_parser("fit", help="largest settings that fit a GPU (estimated; confirmed if a GPU is here)")
    f.add_argument("scenario")
    f.add_argument("--gpu", required=True)
    f.add_argument("--optimizer", required=True, help="optimizer name or a label from the scenario")
    f.add_argument("--vary", type=_csv, default=["batch_size", "history_size", "rank", "history_dtype"],
                   help="knobs to search, in priority order (default: batch_size,history_size,rank,history_dtype)")
    f.add_argument("--out", type=Path, help="where to write fit.json (default: reports/fit-...)")

    rep = sub.add_parser("report", help="render charts, report.md, report.html and results.csv")
    rep.add_argument("results", nargs="+", type=Path, help="results.json files or run directories")
    rep.add_argument("--out", type=Path, help="output directory (default: beside the first results file)")

    c = sub.add_parser("compare", help="side-by-side table of two or more runs")
    c.add_argument("results", nargs="+", type=Path)
    c.add_argument("--md", action="store_true", help="print Markdown instead of a terminal table")

    ch = sub.add_parser("check", help="fail (exit 1) when a run regresses against a baseline")
    ch.add_argument("results", type=Path)
    ch.add_argument("--baseline", type=Path, required=True)
    ch.add_argument("--thresholds", type=Path, help="TOML file with a [thresholds] table")
    ch.add_argument("--update-baseline", action="store_true", help="rewrite the baseline with these results")
    ch.add_argument("--export-benchmark-json", type=Path, metavar="FILE",
                    help="write github-action-benchmark's custom format ([{name, unit, value}])")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("ngl-profile: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # every user-facing error class derives from these
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        print(f"ngl-profile: error: {msg}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    if args.command == "list":
        from ngl_profile.commands import list_things

        return list_things(args.what)
    if args.command == "run":
        from ngl_profile.commands import run

        return run(args)
    if args.command == "fit":
        from ngl_profile.commands import fit

        return fit(args)
    if args.command == "report":
        from ngl_profile.commands import report

        return report(args)
    if args.command == "compare":
        from ngl_profile.commands import compare

        return compare(args)
    from ngl_profile.commands import check

    return check(args)


if __name__ == "__main__":
    sys.exit(main())
