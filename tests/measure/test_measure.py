"""Samplers and throughput math with a fake clock and a fake NVML."""
import types

import pytest

from ngl_profile.zoo.gpus import get_gpu, match_device_name
from ngl_profile.measure.nvml import NvmlSampler
from ngl_profile.measure.timing import PhaseTimer, model_flops_utilization, tokens_per_second


class FakeNvml:
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self):
        self.energy = 1_000_000  # mJ
        self.used = [10 << 30, 12 << 30, 11 << 30]

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return "h"

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=self.used.pop(0) if len(self.used) > 1 else self.used[0])

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=90)

    def nvmlDeviceGetPowerUsage(self, h):
        return 300_000  # mW

    def nvmlDeviceGetClockInfo(self, h, which):
        return 1800 if which == 1 else 9000

    def nvmlDeviceGetTemperature(self, h, which):
        return 70

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self.energy += 150_000
        return self.energy


def test_nvml_summary_with_fake_library():
    t = iter(range(100))
    s = NvmlSampler(nvml=FakeNvml(), interval_s=10.0, clock=lambda: next(t))
    assert s.available
    s.start()
    summary = s.stop()
    assert summary["available"] and summary["used_max_bytes"] == 12 << 30
    assert summary["power_w_mean"] == pytest.approx(300.0) and summary["sm_util_pct_mean"] == 90
    assert summary["energy_j"] == pytest.approx(150.0) and summary["temp_c_max"] == 70


def test_nvml_counts_this_process_not_the_whole_device():
    import os

    fake = FakeNvml()
    fake.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        types.SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=5 << 30),
        types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=700 << 20)]
    assert NvmlSampler(nvml=fake).used_bytes_now() == 700 << 20
    fake.nvmlDeviceGetComputeRunningProcesses = lambda h: []  # PID namespace hides us: whole device
    assert NvmlSampler(nvml=fake).used_bytes_now() == 10 << 30


def test_nvml_unavailable_is_recorded_not_raised():
    class Broken:
        def nvmlInit(self):
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    s = NvmlSampler(nvml=Broken())
    assert not s.available
    out = s.stop()
    assert out == {"available": False, "reason": s.reason} and "libnvidia-ml" in s.reason
    assert s.start().stop()["available"] is False


def test_throughput_math():
    assert tokens_per_second(1000, [0.5, 1.0, 100.0]) == pytest.approx(1000.0)  # median, not mean
    assert tokens_per_second(1000, []) is None
    assert model_flops_utilization(6e9, 1000.0, 100.0) == pytest.approx(0.06)
    assert model_flops_utilization(6e9, 1000.0, None) is None  # unknown device peak: n/a, not a guess
    assert model_flops_utilization(6e9, None, 100.0) is None


def test_phase_timer_with_fake_clock():
    import torch

    ticks = iter([0.0, 1.0, 1.0, 3.5])
    timer = PhaseTimer(torch.device("cpu"), clock=lambda: next(ticks))
    with timer.phase("forward"):
        pass
    with timer.phase("backward"):
        pass
    assert timer.finish_step() == {"forward": 1.0, "backward": 2.5, "total": 3.5}


def test_gpu_catalog():
    assert get_gpu("4090").name == "rtx-4090" and get_gpu("h100").name == "h100-sxm"
    assert get_gpu("4090").memory_bytes == 24 << 30
    with pytest.raises(ValueError, match="unknown GPU 'gtx-480'; known: .*rtx-3090, .*rtx-4090"):
        get_gpu("gtx-480")
    assert match_device_name("NVIDIA H100 80GB HBM3").name == "h100-sxm"
    assert match_device_name("NVIDIA GeForce RTX 4090").name == "rtx-4090"
    assert match_device_name("NVIDIA H100 PCIe").name == "h100-pcie"
