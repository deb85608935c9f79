"""ngl-profile command line. Errors become exit codes here and nowhere else:

  0    ok
  1    `check` found a regression (and nothing else ever exits 1)
  2    bad input: one line naming the problem, no traceback, nothing run
  3    `run` finished but a case crashed (the error is recorded in results.json)
  4    an internal error (a bug): one line; rerun with --debug for the traceback
  130  interrupted (Ctrl-C), 143 terminated (SIGTERM): finished cases are kept

Heavy imports (torch, transformers, matplotlib) happen inside the commands: `--help` is instant."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

__all__ = ["main"]


BAD_INPUT, INTERNAL_ERROR = 2, 4


class UsageError(ValueError):
    """Bad input found by the CLI itself."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # one line, like every other error of the tool (argparse prints usage + error: two)
        self.exit(BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the same clean-up as Ctrl-C runs."""


def _on_signal(signum, frame):
    # a second SIGTERM or Ctrl-C while the clean-up runs must not cut it short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _csv(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _recipe_arguments(p) -> None:
    """What an estimate assumes about the training program: each overrides the scenario's key."""
    from ngl_profile.schema.scenario import ATTENTIONS, PRECISIONS

    p.add_argument("--precision", choices=tuple(PRECISIONS),
                   help="precision recipe: bf16 (all bfloat16, the GaLore paper's), fp32, mixed-bf16 (float32 "
                        "master weights and state, bf16 autocast), bf16-fp32-state (float32 moments)")
    p.add_argument("--attention", choices=ATTENTIONS, help="attention implementation (default: sdpa)")
    p.add_argument("--code-paths", choices=("gpu", "cpu"),
                   help="code paths an estimate models: the target GPU's (default) or the CPU's")
    p.add_argument("--rank", type=int, help="projection rank of every GaLore-family optimizer (not LoRA's)")


def _units_argument(p) -> None:
    p.add_argument("--units", type=lambda u: {"gib": "GiB", "gb": "GB"}.get(u.lower(), u), choices=("GiB", "GB"),
                   default="GiB", help="sizes in GiB (2^30 bytes, the default) or GB (10^9 bytes, datasheets' unit)")


def _parser() -> argparse.ArgumentParser:
    from ngl_profile import __version__

    p = _Parser(prog="ngl-profile", description="Memory and throughput profiler for Natural GaLore and "
                "the optimizers it is compared with.", epilog=_EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"ngl-profile {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    add = sub.add_parser

    def add_parser(*a, **k):  # --debug after the command works too
        sp = add(*a, **k)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return sp

    sub.add_parser = add_parser

    r = sub.add_parser("run", help="profile a scenario: every optimizer, memory by category, tokens/s")
    r.add_argument("scenario", help="preset (7b, 1b, tiny, ...: see `list scenarios`) or a .toml file; or a model "
                   "(as for --model), run with the default scenario")
    r.add_argument("--gpu", help="target GPU (see `list gpus`); overrides the scenario")
    r.add_argument("--model", help="model preset (see `list models`), config.json, directory holding one, or hub id "
                   "in the local HF cache; overrides the scenario's")
    r.add_argument("--optimizers", type=_csv, help="comma-separated subset (labels or names)")
    r.add_argument("--mode", choices=("auto", "measured", "estimated"), help="default: the scenario's (auto)")
    r.add_argument("--out", type=Path, help="output directory (default reports/<scenario>-<gpu>-<UTC time>/)")
    r.add_argument("--jobs", type=int, help="cases at a time (default: 2 estimated, 1 measured)")
    r.add_argument("--no-report", action="store_true",
                   help="do not render charts and report files (a sweep still writes its sweep.md table)")
    r.add_argument("--sweep", action="append", metavar="AXIS=V1,V2,...",
                   help="run once per value of one axis (seq_len, batch_size, rank or history_size), each "
                        "into --out/AXIS-V/, then chart peak memory against it (sweep.png, sweep.md)")
    r.add_argument("--force", action="store_true", help="overwrite a results.json already in --out")
    r.add_argument("--json", action="store_true",
                   help="print the results object (what results.json holds) to stdout, nothing else; "
                        "the table and progress go to stderr")
    _units_argument(r)
    _recipe_arguments(r)
    # data parallel on torch.distributed (engine/distributed): figures per rank = per GPU
    r.add_argument("--parallelism", choices=("none", "ddp", "fsdp2"),
                   help="none (one process, the default), ddp or fsdp2; an estimate plays rank 0 of --world-size "
                        "in one process, a measured run starts --world-size ranks with torchrun")
    r.add_argument("--world-size", type=int, help="ranks (GPUs) for ddp/fsdp2; batch_size is per rank")

    ls = sub.add_parser("list", help="list models, gpus, optimizers or scenarios")
    ls.add_argument("what", choices=("models", "gpus", "optimizers", "scenarios"))

    f = sub.add_parser("fit", help="largest settings that fit a GPU (estimated; confirmed if a GPU is here)")
    f.add_argument("scenario", help="preset or .toml file, as for `run`")
    f.add_argument("--gpu", help="target GPU (default: the scenario's)")
    f.add_argument("--optimizer", required=True, help="optimizer name or a label from the scenario")
    f.add_argument("--vary", type=_csv, default=["batch_size", "history_size", "rank", "history_dtype"],
                   help="knobs to search, in priority order: batch_size, seq_len, rank, proj_type, history_size, "
                        "history_dtype (default: batch_size,history_size,rank,history_dtype)")
    f.add_argument("--out", type=Path, help="where to write fit.json (default: reports/fit-...)")
    _recipe_arguments(f)

    rep = sub.add_parser("report", help="render charts, report.md, report.html and results.csv")
    rep.add_argument("results", nargs="+", type=Path, help="results.json files or run directories")
    rep.add_argument("--out", type=Path, help="output directory (default: beside the first results file)")
    _units_argument(rep)

    c = sub.add_parser("compare", help="side-by-side table of two or more runs")
    c.add_argument("results", nargs="+", type=Path, help="results.json files or run directories")
    c.add_argument("--md", action="store_true", help="print Markdown instead of a terminal table")
    _units_argument(c)

    # quality mode (ngl_profile/quality/): real training, loss against memory
    from ngl_profile.quality.command import lr_list

    tr = sub.add_parser("train", help="train every optimizer of a scenario with a [quality] table on real text: "
                        "held-out loss over seeds against peak memory")
    tr.add_argument("scenario", help="preset (quality-tiny, quality-60m) or a .toml file with a [quality] table")
    tr.add_argument("--out", type=Path, help="output directory (default reports/<scenario>-<device>-<UTC time>/)")
    tr.add_argument("--steps", type=int, help="training steps per run; overrides quality.steps")
    tr.add_argument("--seeds", type=int, help="runs per optimizer; overrides quality.seeds")
    tr.add_argument("--eval-every", type=int, help="steps between held-out evaluations")
    tr.add_argument("--lr-grid", type=lr_list, metavar="LR1,LR2,...",
                    help="tune each case without its own lr over these; overrides quality.lr_grid")
    tr.add_argument("--tune-steps", type=int, help="steps of each tuning run (0: --steps)")
    tr.add_argument("--optimizers", type=_csv, help="comma-separated subset (labels or names)")
    tr.add_argument("--device", choices=("cpu", "cuda"), help="where to train (default: cuda if present)")
    tr.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); 1 is faster for a tiny "
                    "model on a busy machine")
    tr.add_argument("--force", action="store_true", help="overwrite a results.json already in --out")

    ch = sub.add_parser("check", help="fail (exit 1) when a run regresses against a baseline")
    ch.add_argument("results", type=Path, help="the run to check (results.json or its directory)")
    ch.add_argument("--baseline", type=Path, required=True, help="the results file to check against")
    ch.add_argument("--thresholds", type=Path, help="TOML file with a [thresholds] table")
    ch.add_argument("--update-baseline", action="store_true", help="rewrite the baseline with these results")
    ch.add_argument("--export-benchmark-json", type=Path, metavar="FILE",
                    help="write github-action-benchmark's custom format ([{name, unit, value}])")
    return p


_EXAMPLES = """examples:
  ngl-profile run 7b --gpu 4090                 does LLaMA-7B train on a 24 GB card, with which optimizer?
  ngl-profile run tiny --mode measured --out r  profile the CI scenario on this machine
  ngl-profile fit 7b --optimizer natural-galore-8bit-layerwise --vary history_size,history_dtype
  ngl-profile compare runA runB --md            side by side, with deltas
  ngl-profile check run --baseline base.json    exit 1 on a regression
  ngl-profile train quality-tiny --out q        held-out loss against memory, trained on real text

exit codes: 0 ok, 1 regression (check), 2 bad input, 3 a case crashed (run), 4 internal error,
130 interrupted, 143 terminated"""


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else e.__class__.__name__


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already printed as one line)
        return e.code if isinstance(e.code, int) else BAD_INPUT
    import threading

    handle = threading.current_thread() is threading.main_thread()  # signals go to the main thread only
    previous = None
    if handle:
        # an ignored SIGINT (`nohup`, a background job of a script) stays ignored
        keep_sigint = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        previous = (signal.signal(signal.SIGTERM, _on_signal),
                    signal.getsignal(signal.SIGINT) if keep_sigint else signal.signal(signal.SIGINT, _on_signal))
    try:
        return _dispatch(args)
    except Terminated:
        print("ngl-profile: terminated (SIGTERM); finished cases are kept in results.json", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("ngl-profile: interrupted; finished cases are kept in results.json", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # every user-facing error class derives from these
        if args.debug:
            raise
        print(f"ngl-profile: error: {_one_line(e)}", file=sys.stderr)
        return BAD_INPUT
    except Exception as e:  # noqa: BLE001 — a bug: one line and a distinct code, never exit 1
        if args.debug:
            raise
        print(f"ngl-profile: internal error: {e.__class__.__name__}: {_one_line(e)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return INTERNAL_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])


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
    if args.command == "train":
        from ngl_profile.commands import train

        return train(args)
    from ngl_profile.commands import check

    return check(args)


if __name__ == "__main__":
    sys.exit(main())
