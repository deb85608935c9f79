"""Runs a scenario: every optimizer case in its own subprocess, results written after each one.

A child process per case gives each a clean allocator, and an OOM, a crash or a kill ends only
that case (recorded with its message and the breakdown at failure); the others go on. Estimated
cases run two at a time (they are CPU-bound and allocate nothing real); measured ones one at a
time, so that timings do not disturb each other.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ngl_profile.zoo.gpus import get_gpu
from ngl_profile.schema.results import CaseResult, RunResult, write_json_atomic
from ngl_profile.schema.scenario import CaseSpec, Scenario

__all__ = ["plan", "run_scenario", "environment", "RunRefused", "OutputBusy", "output_lock", "default_out_dir"]


class RunRefused(ValueError):
    """The requested mode cannot be honoured here; the message says why, in one line."""


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def plan(scn: Scenario, requested: str) -> tuple[str, str]:
    """(mode, device) for this machine: measured on CUDA when there is one, else estimated.

    Measured on a CPU is only for models that fit this machine's RAM with room to spare.
    """
    from ngl_profile.zoo.models import approx_parameters

    cuda = _cuda_available()
    if requested == "auto":
        if cuda and scn.parallelism != "none":  # measured only where every rank has its own GPU
            import torch

            cuda = scn.world_size <= torch.cuda.device_count()
        return ("measured", "cuda") if cuda else ("estimated", "cpu")
    if requested == "estimated":
        return "estimated", "cpu"
    if scn.parallelism != "none":
        _check_ranks(scn, cuda)
    if cuda:
        return "measured", "cuda"
    import psutil

    need = approx_parameters(scn.model_spec) * 20  # weights + grads + Adam state + activations, roughly
    have = psutil.virtual_memory().available
    if need > have / 2:
        raise RunRefused(f"measured mode needs a CUDA GPU for {scn.model}: about {need / 2**30:.0f} GiB "
                         f"on this CPU, {have / 2**30:.0f} GiB available (use --mode estimated)")
    return "measured", "cpu"


def _check_ranks(scn: Scenario, cuda: bool) -> None:
    """A measured DDP/FSDP2 run starts world_size real ranks here: one per GPU, or (CPU, gloo) at
    most one per core."""
    import torch

    have = torch.cuda.device_count() if cuda else (os.cpu_count() or 1)
    if scn.world_size > have:
        what = "CUDA GPUs" if cuda else "CPU cores"
        raise RunRefused(f"measured {scn.parallelism} with world_size {scn.world_size} needs that many ranks on "
                         f"this machine; it has {have} {what} (use --mode estimated for any world size)")


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    for pkg in ("transformers", "bitsandbytes", "peft", "galore_torch", "ngl_profile"):
        try:
            from importlib.metadata import version

            env[pkg] = version(pkg.replace("_", "-"))
        except Exception:
            env[pkg] = None
    env["commit"] = _git_commit()
    if device == "cuda":
        # through NVML: torch.cuda calls here would give this parent process a CUDA context, which
        # the children would then count as theirs (and it would take memory from the cases)
        from ngl_profile.measure.nvml import NvmlSampler

        env["cuda"] = torch.version.cuda
        info = NvmlSampler().device_info()
        env.update(info or {"device_name": "CUDA device (NVML unavailable)", "driver": None})
    else:
        env["device_name"] = f"CPU ({_cpu_model() or platform.processor() or platform.machine()})"
        env["driver"] = None
    return env


def _cpu_model() -> str | None:
    """The CPU's model name (Linux): machines of one kind differ by CPU, and so do their timings."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except Exception:
        return None


def default_out_dir(scn: Scenario) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("reports") / f"{scn.name}-{scn.gpu}-{stamp}"  # both names checked: no '/' or '..'


class OutputBusy(OSError):
    """The output directory is taken: another run is writing there, or it holds a finished run."""


@contextmanager
def output_lock(out: Path, force: bool = False):
    """Hold `out` for one run: refuse a directory another live run holds, and one that already has
    a results.json unless `force` (two runs into one folder would silently overwrite each other)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".ngl-profile.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        # the kernel's lock, not the file's existence: it is released when its holder dies, so a
        # crashed run never leaves the folder locked, and two runs can never both hold it
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _lock_owner(lock)
        os.close(fd)
        raise OutputBusy(f"{out} is being written by another ngl-profile run"
                         + (f" (pid {pid})" if pid else "")) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())  # for the message another run prints
        if (out / "results.json").exists() and not force:
            raise OutputBusy(f"{out} already holds a run's results.json; choose another --out, or pass --force "
                             "to overwrite it")
        yield out
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)  # releases the flock


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


class _Children:
    """The live case processes, so an interrupted run can end them instead of orphaning them."""

    def __init__(self):
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.closing = False

    def start(self, *args, **kwargs) -> subprocess.Popen:
        with self._lock:
            if self.closing:
                raise _Cancelled()
            proc = subprocess.Popen(*args, **kwargs)
            self._procs.add(proc)
            return proc

    def done(self, proc) -> None:
        with self._lock:
            self._procs.discard(proc)

    def end_all(self, grace_s: float = 5.0) -> None:
        with self._lock:
            self.closing = True
            procs = list(self._procs)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class _Cancelled(Exception):
    """A queued case that never started because the run is being interrupted."""


def _run_child(spec: CaseSpec, workdir: Path, index: int, on_event, children: _Children) -> CaseResult:
    spec_path = workdir / f"case{index}.json"
    out_path = workdir / f"case{index}.result.json"
    err_path = workdir / f"case{index}.stderr"
    spec_path.write_text(json.dumps(spec.to_dict()))
    label = spec.case.label
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    with open(err_path, "w") as err:
        # a measured DDP/FSDP2 case: torchrun's ranks, merged into one result (engine/distributed/launch.py)
        entry = "ngl_profile.engine.distributed.launch" if spec.scenario.parallelism != "none" and \
            spec.mode == "measured" else "ngl_profile.engine.case"
        proc = children.start([sys.executable, "-m", entry, str(spec_path), str(out_path)],
                              stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        try:
            for line in proc.stdout:
                event = _event(line)
                if event is not None:
                    on_event(label, event)
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # the loop above raised: never leave the case running
                proc.kill()
                proc.wait()
            proc.stdout.close()
            children.done(proc)
    opt = {"name": spec.case.name, "label": label, "hparams": spec.hparams}
    if rc == 0 and out_path.is_file():
        try:
            return CaseResult(**json.loads(out_path.read_text()))
        except (ValueError, TypeError) as e:  # a result file we cannot read ends this case, not the run
            return CaseResult(optimizer=opt, status="error", provenance=spec.mode,
                              message=f"unreadable case result ({e.__class__.__name__}: {e})")
    tail = [ln for ln in err_path.read_text(errors="replace").splitlines() if ln.strip()]
    if rc < 0:
        n = -rc
        why = (": SIGKILL is also what the kernel's OOM killer sends when the host runs out of memory "
               "(see `dmesg`)") if n == signal.SIGKILL else ""
        return CaseResult(optimizer=opt, status="error", provenance=spec.mode,
                          message=f"case process killed by signal {n} ({_signal_name(n)}){why}")
    return CaseResult(optimizer=opt, status="error", provenance=spec.mode,
                      message=f"case process exited with code {rc}: {tail[-1] if tail else 'no output'}")


def _event(line: str) -> dict | None:
    """A progress event from the case process's stdout, or None for anything else it printed."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    ok = isinstance(event, dict) and event.get("event") in ("step", "queued", "done")
    if ok and event["event"] == "step":
        ok = event.get("kind") in ("tracked", "warmup", "timed") and all(
            isinstance(event.get(k), int) for k in ("i", "n"))
    return event if ok else None


def run_scenario(scn: Scenario, mode: str, device: str, out_dir: Path,
                 on_event: Callable[[str, dict], None] = lambda label, ev: None,
                 jobs: int | None = None) -> RunResult:
    """Run every case; results.json in out_dir is rewritten (atomically) as each case finishes,
    so an interrupted run keeps what it finished. An interrupt (Ctrl-C, SIGTERM turned into
    KeyboardInterrupt by the CLI) ends the running case processes and removes the temp folder."""
    gpu = get_gpu(scn.gpu)
    run = RunResult(scenario=scn.to_dict(), gpu={"name": gpu.name, "memory_bytes": gpu.memory_bytes,
                                                 "bf16_tflops": gpu.bf16_tflops, "bandwidth_gbs": gpu.bandwidth_gbs,
                                                 "source": gpu.source},
                    mode=mode, device=device, environment=environment(device),
                    created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    slots: list[CaseResult | None] = [None] * len(scn.optimizers)

    def save() -> None:
        run.cases = [c for c in slots if c is not None]
        write_json_atomic(results_path, run.to_dict())

    save()
    specs = [CaseSpec(scenario=scn, case=c, mode=mode, device=device, target_bytes=gpu.memory_bytes)
             for c in scn.optimizers]
    jobs = jobs or (min(2, os.cpu_count() or 1) if mode == "estimated" else 1)
    children = _Children()
    with tempfile.TemporaryDirectory(prefix="ngl-profile-") as tmp:
        pool = ThreadPoolExecutor(max_workers=jobs)
        futures = {}
        try:
            for i, spec in enumerate(specs):
                on_event(spec.case.label, {"event": "queued"})
                futures[pool.submit(_run_child, spec, Path(tmp), i, on_event, children)] = i
            for fut in as_completed(futures):
                i = futures[fut]
                slots[i] = fut.result()
                on_event(specs[i].case.label, {"event": "done", "status": slots[i].status})
                save()
        finally:
            children.end_all()  # no-op after a normal finish; on an interrupt, no orphaned case
            pool.shutdown(wait=True, cancel_futures=True)
    return run
