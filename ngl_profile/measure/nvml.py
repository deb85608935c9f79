"""NVML sampler: a background thread that reads the GPU about ten times a second.

Used memory, power, the energy counter (→ joules over the timed steps → tokens per joule), SM
utilisation, clocks and temperature. No NVML library, no GPU, or a call NVML refuses: recorded as
unavailable with the reason, never an error. `nvml` and `clock` are injectable for tests.
"""
from __future__ import annotations

import statistics
import threading
import time

__all__ = ["NvmlSampler"]


class NvmlSampler:
    def __init__(self, device_index: int = 0, interval_s: float = 0.1, nvml=None, clock=time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._samples: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy0 = None
        self.reason = ""
        self._nvml = nvml
        self._handle = None
        try:
            if self._nvml is None:
                import pynvml  # provided by nvidia-ml-py

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception as e:  # no library, no driver, no device: all mean "not available"
            self.reason = f"{e.__class__.__name__}: {e}".strip()
            self._handle = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def _read(self, what, *args):
        try:
            return what(self._handle, *args)
        except Exception:
            return None

    def sample(self) -> dict:
        n = self._nvml
        mem = self._read(n.nvmlDeviceGetMemoryInfo)
        util = self._read(n.nvmlDeviceGetUtilizationRates)
        power = self._read(n.nvmlDeviceGetPowerUsage)
        return {"t": self.clock(), "used_bytes": getattr(mem, "used", None),
                "power_w": power / 1e3 if power is not None else None,
                "sm_util_pct": getattr(util, "gpu", None),
                "sm_clock_mhz": self._read(n.nvmlDeviceGetClockInfo, getattr(n, "NVML_CLOCK_SM", 1)),
                "mem_clock_mhz": self._read(n.nvmlDeviceGetClockInfo, getattr(n, "NVML_CLOCK_MEM", 2)),
                "temp_c": self._read(n.nvmlDeviceGetTemperature, getattr(n, "NVML_TEMPERATURE_GPU", 0))}

    def _energy_mj(self):
        return self._read(self._nvml.nvmlDeviceGetTotalEnergyConsumption)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._samples.append(self.sample())
            self._stop.wait(self.interval_s)

    def start(self) -> "NvmlSampler":
        if self.available:
            self._samples.clear()
            self._stop.clear()
            self._energy0 = self._energy_mj()
            self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> dict:
        """Summary of the window since start(); {"available": False, "reason": ...} without NVML."""
        if not self.available:
            return {"available": False, "reason": self.reason}
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._samples.append(self.sample())
        energy1 = self._energy_mj()
        s = self._samples

        def vals(key):
            return [x[key] for x in s if x[key] is not None]

        def mean(key):
            v = vals(key)
            return statistics.fmean(v) if v else None

        used = vals("used_bytes")
        energy = (energy1 - self._energy0) / 1e3 if energy1 is not None and self._energy0 is not None else None
        return {"available": True, "samples": len(s), "window_s": s[-1]["t"] - s[0]["t"],
                "used_max_bytes": max(used) if used else None, "power_w_mean": mean("power_w"),
                "energy_j": energy, "sm_util_pct_mean": mean("sm_util_pct"),
                "sm_clock_mhz_mean": mean("sm_clock_mhz"), "mem_clock_mhz_mean": mean("mem_clock_mhz"),
                "temp_c_max": max(vals("temp_c"), default=None)}

    def used_bytes_now(self) -> int | None:
        """Device memory used by this process if NVML can tell (other processes on the same GPU
        must not count as our context), else by the whole device."""
        if not self.available:
            return None
        import os

        procs = self._read(self._nvml.nvmlDeviceGetComputeRunningProcesses) or []
        mine = [p.usedGpuMemory for p in procs if getattr(p, "pid", None) == os.getpid()
                and getattr(p, "usedGpuMemory", None) is not None]
        if mine:
            return int(mine[0])
        mem = self._read(self._nvml.nvmlDeviceGetMemoryInfo)  # PID namespaces hide us: whole device
        return getattr(mem, "used", None)

    def device_info(self) -> dict:
        """Name, total memory and driver, without creating a CUDA context in this process."""
        if not self.available:
            return {}
        name = self._read(self._nvml.nvmlDeviceGetName)
        mem = self._read(self._nvml.nvmlDeviceGetMemoryInfo)
        try:
            driver = self._nvml.nvmlSystemGetDriverVersion()
        except Exception:
            driver = None
        return {"device_name": name.decode() if isinstance(name, bytes) else name,
                "device_memory_bytes": getattr(mem, "total", None), "driver": driver}
