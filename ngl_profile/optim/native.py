"""The window's two passes as plain C on a CPU (window.c), built here at first use and called by ctypes.

Why: on an Intel Xeon (2 vCPUs, AVX-512) inductor's float64-widened passes (kernels.py) ran at
~3× a plain read of the window: ATen's vector library converts float32 to float64 through a store,
a scalar loop and a reload, so its loop is compute-bound there. window.c widens with the C
compiler's own vector conversion and reads the window once per pass; over llama-60m's two arenas
it took 1.10× (Gram rows) and 1.00× (g̃) a plain read on that machine, where the compiled
passes took 3.0× and 3.5× (benchmarks/window_passes.py prints these rows). With the window's rows
prefetched (`_run` measures how far ahead) they took 0.76× and 0.83× a plain read of the windows one
by one there (2026-12-04): the rows are read as several streams at once, which the memory serves
faster than the one stream of that read. Which implementation runs is still measured, not
assumed: the optimizers time their steps with each (choice.py).

Built with the C compiler inductor would use on a CPU ($CC, else `cc`), `-O3 -march=native
-fopenmp`, into a cache keyed by the source, the flags, the compiler and the CPU's flags
($NGL_PROFILE_CACHE, else ~/.cache/ngl-profile), written atomically. Without a compiler, or if
the build fails, one warning and `available()` is False: the optimizers use the other kernels.
The library links the process's OpenMP runtime (libgomp, loaded by torch), as inductor's do.

Results: the products of stored values are exact in float64 and summed in float64, so a Gram
row agrees with the eager one to rounding (≤ 1e-13 relative, tested); g̃ is summed in float64 in
slot order and rounded once (the (s+1)·2⁻⁵³ bound of natural.combine, tested); the order of every
sum depends only on the shapes, not on the thread count (an int8 Gram row is summed in integers:
exact, so any order gives the same). An int8 window's new column (`quantize`) is the same bytes
the torch ops of natural._store make. Memory: the caller allocates the outputs (where
ngl-profile's tracker and estimator see them); the library mallocs P·⌈k/16384⌉·s doubles of
partial sums (Gram) or P·s folded weights (g̃), as inductor's kernel keeps its own reduction
buffer; `quantize` allocates nothing.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import platform
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["available", "gram_rows", "combine_rows", "quantize", "prefetch_choice", "prefetch_forced",
           "prefetch_frozen", "PREFETCH_CANDIDATES", "PREFETCH_TRIES"]

_SOURCE = Path(__file__).with_name("window.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
_STORAGE = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}
_OUT = {torch.float32: 0, torch.bfloat16: 1}
_lib: ctypes.CDLL | None = None
_tried = False
_lock = threading.Lock()  # one build per process, even when optimizers step in several threads


def _cache_dir() -> Path:
    root = os.environ.get("NGL_PROFILE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ngl-profile")
    return Path(root) / "native"


def _cpu_flags() -> str:
    """What -march=native builds for: the machine, and the CPU's feature lines (x86 "flags", Arm
    "Features") and model, so a cache shared between machines never loads another CPU's build."""
    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name", "CPU part")) and line not in lines:
                    lines.append(line)
    except OSError:
        pass
    return "".join([platform.machine(), platform.processor(), *lines])


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or $CC) on PATH")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(_FLAGS).encode(), version.encode(),
                                     _cpu_flags().encode()])).hexdigest()[:20]
    target = _cache_dir() / f"window-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{Path(cc).name} failed: {(done.stderr.strip().splitlines() or ['?'])[0]}")
            os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.ngl_gram.argtypes = [c_int, ptr, i64, i64, i64, i64, i64, ptr, i64, ptr, i64, ptr, i64, ptr, i64, c_int]
    lib.ngl_combine.argtypes = [c_int, c_int, ptr, i64, i64, i64, i64, i64, ptr, i64, ptr, i64, ptr, i64, i64, c_int]
    lib.ngl_quantize.argtypes = [c_int, ptr, i64, ptr, ptr, c_int]
    lib.ngl_gram.restype = lib.ngl_combine.restype = lib.ngl_quantize.restype = c_int
    return lib


def _library() -> ctypes.CDLL | None:
    global _lib, _tried
    if _tried:  # every pass asks: no lock once the build is settled
        return _lib
    with _lock:
        if not _tried:
            try:
                _lib = _build()
            except Exception as e:  # noqa: BLE001 — any failure to build or load means: the other kernels
                warnings.warn(f"the native window kernels are not usable here ({str(e)[:200]}); "
                              f"Natural GaLore uses its compiled or eager kernels", RuntimeWarning, stacklevel=3)
            _tried = True
    return _lib


def available() -> bool:
    """Whether the native kernels are built (building them at the first call) and loadable here."""
    return _library() is not None


def _rows_ok(*ts: torch.Tensor | None) -> bool:
    return all(t is None or (t.device.type == "cpu" and (t.dim() == 0 or t.stride(-1) == 1)) for t in ts)


def _outer(t: torch.Tensor | None, batched: bool) -> int:
    """The stride between windows (0 for one window: no views are made, which the memory
    tracker would see)."""
    return 0 if t is None or not batched else t.stride(0)


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _check(code: int) -> None:
    if code != 0:
        raise MemoryError("the native window kernel could not allocate its partial sums")


# How far ahead (bytes) the passes prefetch the window's rows (window.c, AHEAD): measured where they
# run, on the calls the steps make anyway. Each pass over an arena of a given shape and dtype (of ≥
# _MEASURE_BYTES) takes the candidate distances in turn for its first PREFETCH_TRIES ×
# len(PREFETCH_CANDIDATES) calls, each call timed, and then keeps the distance of the lowest median
# (ties: the shorter). Not extra passes at the first call: repeated at once, those read an arena
# that fits the L3 cache from there, where prefetching pays less than from memory (the bf16 g̃
# then chose 0 on an Intel Xeon, where the steps ran 2 % faster with a prefetch). Not a constant
# either: the prefetchers, and so the distance that pays, differ between CPUs. On that Xeon (2
# vCPUs) the fp32 passes over llama-60m's arenas went from 9.53 to 8.39 ms (Gram rows) and 10.44
# to 8.98 ms (g̃) with it (benchmarks/window_passes.py). Nothing is measured while a StepChooser
# is timing its trial steps (`prefetch_frozen`): those compare kernels, not distances.
PREFETCH_CANDIDATES = (0, 512, 2048)
PREFETCH_TRIES = 3
_MEASURE_BYTES = 1 << 20  # below, a call's time is mostly its overhead
_prefetch: dict[tuple, int] = {}  # (pass, dtype, shape) → the distance kept
_prefetch_seconds: dict[tuple, dict[int, list[float]]] = {}  # the timed calls, per distance
_forced: int | None = None
_frozen = 0


@contextmanager
def prefetch_forced(distance: int | None):
    """Inside the block every pass prefetches `distance` bytes ahead (None: as measured), and
    nothing is measured: for benchmarks that compare distances side by side."""
    global _forced
    before, _forced = _forced, distance
    try:
        yield
    finally:
        _forced = before


@contextmanager
def prefetch_frozen():
    """Inside the block the passes use the distances kept so far (0 where none is) and time
    nothing (choice.StepChooser's trial steps)."""
    global _frozen
    _frozen += 1
    try:
        yield
    finally:
        _frozen -= 1


def prefetch_choice() -> dict[str, dict]:
    """{"gram float32 24×10×176128": {"bytes": distance kept or None (still measuring),
    "seconds": {distance: median of its timed calls}}, …} for the passes measured in this process."""
    return {f"{kind} {str(dtype).removeprefix('torch.')} {'×'.join(map(str, shape))}":
            {"bytes": _prefetch.get((kind, dtype, shape)),
             "seconds": {d: statistics.median(t) for d, t in tried.items() if t}}
            for (kind, dtype, shape), tried in list(_prefetch_seconds.items())}  # a copy: passes may run meanwhile


def _run(kind: str, cols: torch.Tensor, call) -> None:
    """call(prefetch bytes) → window.c's return code, at the distance this pass has measured."""
    key = (kind, cols.dtype, tuple(cols.shape))
    if _forced is not None:
        _check(call(_forced))
        return
    if key in _prefetch or _frozen or cols.numel() * cols.element_size() < _MEASURE_BYTES:
        _check(call(_prefetch.get(key, 0)))
        return
    tried = _prefetch_seconds.setdefault(key, {d: [] for d in PREFETCH_CANDIDATES})
    d = min(PREFETCH_CANDIDATES, key=lambda c: len(tried[c]))  # in turn: the least timed
    t0 = time.perf_counter()
    _check(call(d))
    tried[d].append(time.perf_counter() - t0)
    if all(len(t) >= PREFETCH_TRIES for t in tried.values()):
        _prefetch[key] = min(PREFETCH_CANDIDATES, key=lambda c: statistics.median(tried[c]))


def _take(cols: torch.Tensor, col_scale: torch.Tensor | None, *rows: torch.Tensor | None) -> ctypes.CDLL | None:
    """The library, if window.c takes this case (a CPU window of a storage dtype it has, rows of
    stride 1, a float32 scale exactly for int8), else None."""
    lib = _library() if cols.device.type == "cpu" and cols.dtype in _STORAGE else None
    if (lib is None or (cols.dtype == torch.int8) != (col_scale is not None)
            or (col_scale is not None and col_scale.dtype != torch.float32) or not _rows_ok(cols, col_scale, *rows)):
        return None
    return lib


def gram_rows(cols: torch.Tensor, col_scale: torch.Tensor | None, g: torch.Tensor,
              g_scale: torch.Tensor | None, out: torch.Tensor) -> bool:
    """kernels.gram_rows (cols P×s×k) or kernels.gram_row (s×k) into `out` (float64, contiguous);
    False if window.c does not take this case or is not built here."""
    lib = _take(cols, col_scale, g)  # g_scale: one value per window, at any stride
    batched = cols.dim() == 3
    P, s, k = cols.shape if batched else (1, *cols.shape)
    if (lib is None or g.dtype != cols.dtype or g.shape[-1] != k or out.dtype != torch.float64
            or not out.is_contiguous() or out.numel() != P * s or (g_scale is None) != (col_scale is None)
            or (g_scale is not None and (g_scale.device.type != "cpu" or g_scale.dtype != torch.float32))):
        return False
    _run("gram", cols, lambda pf: lib.ngl_gram(
        _STORAGE[cols.dtype], cols.data_ptr(), P, s, k, _outer(cols, batched), cols.stride(-2), g.data_ptr(),
        _outer(g, batched), _ptr(col_scale), _outer(col_scale, batched), _ptr(g_scale), _outer(g_scale, batched),
        out.data_ptr(), pf, torch.get_num_threads()))
    return True


def combine_rows(cols: torch.Tensor, col_scale: torch.Tensor | None, w: torch.Tensor, out: torch.Tensor) -> bool:
    """kernels.combine_rows (cols P×s×k, out P×k) or kernels.combine (s×k, out k) into `out`
    (float32 or bfloat16); False if window.c does not take this case or is not built here."""
    lib = _take(cols, col_scale, w, out)
    batched = cols.dim() == 3
    P, s, k = cols.shape if batched else (1, *cols.shape)
    if (lib is None or out.dtype not in _OUT or w.dtype != torch.float64 or w.shape[-1] != s
            or out.shape[-1] != k or w.numel() != P * s or out.numel() != P * k):
        return False
    _run("combine", cols, lambda pf: lib.ngl_combine(
        _STORAGE[cols.dtype], _OUT[out.dtype], cols.data_ptr(), P, s, k, _outer(cols, batched), cols.stride(-2),
        _ptr(col_scale), _outer(col_scale, batched), w.data_ptr(), _outer(w, batched), out.data_ptr(),
        _outer(out, batched), pf, torch.get_num_threads()))
    return True


def quantize(g: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> bool:
    """An int8 window column from g (float32 or bfloat16, length k): `codes` (int8, length k) and
    `scale` (a float32 element) exactly as natural._store's torch ops make them (window.c says how);
    False, writing nothing, if window.c does not take this case or g is not finite (the caller's
    torch ops then give torch's answer)."""
    lib = _library() if g.device.type == "cpu" else None
    if (lib is None or g.dtype not in (torch.float32, torch.bfloat16) or codes.dtype != torch.int8
            or scale.dtype != torch.float32 or scale.numel() != 1 or g.dim() != 1 or codes.shape != g.shape
            or not _rows_ok(g, codes) or codes.device.type != "cpu" or scale.device.type != "cpu"):
        return False
    return lib.ngl_quantize(_STORAGE[g.dtype], g.data_ptr(), g.numel(), codes.data_ptr(), scale.data_ptr(),
                            torch.get_num_threads()) == 0
