"""GPU catalog: memory, dense bf16 tensor TFLOP/s, memory bandwidth, and where each figure came from.

TFLOP/s are dense (no 2:4 sparsity) with float32 accumulation, the figure MFU is measured against.
memory_bytes is what the driver reports as total (nvidia-smi "Total"), not the marketing GB, where
known; otherwise the nominal GiB.
"""
from __future__ import annotations

from dataclasses import dataclass

from ngl_profile.zoo.registry import unique

__all__ = ["GPU", "GPUS", "get_gpu", "gpu_names", "CUDA_CONTEXT_BYTES"]

GiB = 1 << 30
MiB = 1 << 20
# What a CUDA context plus cuBLAS/cuDNN workspaces typically hold outside PyTorch's allocator.
# Used only for *estimated* runs (a measured run records the real figure as the "context" category).
CUDA_CONTEXT_BYTES = 512 * MiB


@dataclass(frozen=True, slots=True)
class GPU:
    name: str
    memory_bytes: int
    bf16_tflops: float
    """dense bf16 tensor-core TFLOP/s (T4: fp16, it has no bf16)"""
    bandwidth_gbs: float
    source: str
    aliases: tuple[str, ...] = ()

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB


_CATALOG = [
    GPU("rtx-3090", 24 * GiB, 71.0, 936, "NVIDIA Ampere GA102 whitepaper, RTX 3090 column", ("3090",)),
    GPU("rtx-4090", 24 * GiB, 165.2, 1008, "NVIDIA Ada Lovelace (AD102) whitepaper, RTX 4090 column",
        ("4090",)),
    GPU("rtx-5090", 32 * GiB, 209.5, 1792, "NVIDIA RTX Blackwell GPU architecture whitepaper, RTX 5090",
        ("5090",)),
    GPU("a10", 24 * GiB, 125.0, 600, "NVIDIA A10 datasheet", ()),
    GPU("l4", 24 * GiB, 121.0, 300, "NVIDIA L4 datasheet", ()),
    GPU("t4", 16 * GiB, 65.0, 320, "NVIDIA T4 datasheet (fp16 tensor: T4 has no bf16)", ()),
    GPU("a6000", 48 * GiB, 154.8, 768, "NVIDIA RTX A6000 datasheet", ("rtx-a6000",)),
    GPU("l40s", 48 * GiB, 362.05, 864, "NVIDIA L40S datasheet", ()),
    GPU("a100-40gb", 40 * GiB, 312.0, 1555, "NVIDIA A100 datasheet (40GB SXM/PCIe)", ("a100-40",)),
    GPU("a100-80gb", 80 * GiB, 312.0, 2039, "NVIDIA A100 datasheet (80GB SXM)", ("a100", "a100-80")),
    GPU("h100-pcie", 80 * GiB, 756.0, 2000, "NVIDIA H100 datasheet, PCIe column", ()),
    GPU("h100-sxm", 81559 * MiB, 989.0, 3350, "NVIDIA H100 datasheet, SXM column; memory as "
        "nvidia-smi reports an H100 80GB HBM3", ("h100",)),
    GPU("h200", 143771 * MiB, 989.0, 4800, "NVIDIA H200 datasheet (SXM); memory as nvidia-smi reports it",
        ()),
]


GPUS = unique(((key, g) for g in _CATALOG for key in (g.name, *g.aliases)), "GPU name")


def gpu_names() -> list[str]:
    return [g.name for g in _CATALOG]


def get_gpu(name: str) -> GPU:
    key = name.strip().lower()
    if key in GPUS:
        return GPUS[key]
    if "rtx-" + key in GPUS:
        return GPUS["rtx-" + key]
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(gpu_names())} "
                     f"(aliases: {', '.join(a for g in _CATALOG for a in g.aliases)})")


def match_device_name(device_name: str) -> GPU | None:
    """The catalog entry for a torch.cuda device name such as 'NVIDIA H100 80GB HBM3', if any."""
    n = device_name.lower().replace(" ", "")
    for gpu in _CATALOG:
        base = gpu.name.replace("rtx-", "").split("-")[0]
        if base in n and ("pcie" in gpu.name) == ("pcie" in n):
            return gpu
    return None
