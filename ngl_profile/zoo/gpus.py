"""GPU catalog: memory, dense bf16 tensor TFLOP/s, memory bandwidth, and where each figure came from;
and custom cards given only by their memory size (`--gpu 20GiB`).

TFLOP/s are dense (no 2:4 sparsity) with float32 accumulation, the figure MFU is measured against.
GeForce cards run fp16/bf16 tensor math with fp32 accumulation at half the rate of fp16 accumulation:
their entries use NVIDIA's "FP16 Tensor TFLOPS with FP32 Accumulate" figure (bf16 runs at the same
rate). Where NVIDIA publishes no such column for a card, the figure is derived from its tensor-core
count and boost clock at the per-core rate of a whitepaper column of the same architecture, and the
entry's `source` says so. memory_bytes is what the driver reports as total (nvidia-smi "Total"), not
the marketing GB, where known; otherwise the nominal GiB.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from ngl_profile.zoo.registry import unique

__all__ = ["GPU", "GPUS", "get_gpu", "gpu_names", "custom_gpu", "match_device_name", "CUDA_CONTEXT_BYTES",
           "GiB", "MiB", "GB", "MB", "SIZE_HINT"]

GiB, MiB = 1 << 30, 1 << 20
GB, MB = 10**9, 10**6
# What a CUDA context plus cuBLAS/cuDNN workspaces typically hold outside PyTorch's allocator.
# Used only for *estimated* runs (a measured run records the real figure as the "context" category).
CUDA_CONTEXT_BYTES = 512 * MiB
SIZE_HINT = "a memory size also works: 20GiB, 24GB, 12.5GiB (GB = 10^9 bytes, GiB = 2^30)"


@dataclass(frozen=True, slots=True)
class GPU:
    name: str
    memory_bytes: int
    bf16_tflops: float | None
    """dense bf16 tensor-core TFLOP/s (T4, V100: fp16, they have no bf16); None for a card given only
    by its memory size"""
    bandwidth_gbs: float | None
    """memory bandwidth, GB/s; None for a card given only by its memory size"""
    source: str
    aliases: tuple[str, ...] = ()

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB


# Derived GeForce figures: tensor cores × boost GHz × 128 FLOP/clock, the fp32-accumulate rate per core
# of the whitepaper columns (RTX 3090: 328 × 1.695 × 128 = 71.2; RTX 4090: 512 × 2.52 × 128 = 165.2).
_ADA_RATE = "× 128 FLOP/clk per tensor core, the fp32-accumulate rate of the Ada whitepaper's RTX 4090 column"
_CATALOG = [
    GPU("rtx-3060", 12 * GiB, 25.5, 360, "derived, NVIDIA publishes no tensor TFLOP/s column for it: 112 "
        "tensor cores × 1.777 GHz boost × 128 FLOP/clk (the fp16/bf16 fp32-accumulate rate per core of the "
        "Ampere GA102 whitepaper's RTX 3090 column); 192-bit 15 Gbps GDDR6", ("3060",)),
    GPU("rtx-3080", 10 * GiB, 59.5, 760, "NVIDIA Ampere GA102 whitepaper, RTX 3080 (10GB) column, FP16 "
        "tensor with FP32 accumulate", ("3080",)),
    GPU("rtx-3090", 24 * GiB, 71.0, 936, "NVIDIA Ampere GA102 whitepaper, RTX 3090 column", ("3090",)),
    GPU("rtx-4060", 8 * GiB, 30.2, 272, f"derived: 96 tensor cores × 2.46 GHz boost {_ADA_RATE}; "
        "128-bit 17 Gbps GDDR6", ("4060",)),
    GPU("rtx-4060-ti-16gb", 16 * GiB, 44.1, 288, f"derived: 136 tensor cores × 2.535 GHz boost {_ADA_RATE}; "
        "128-bit 18 Gbps GDDR6", ("4060ti-16gb",)),
    GPU("rtx-4070", 12 * GiB, 58.3, 504, f"derived: 184 tensor cores × 2.475 GHz boost {_ADA_RATE}; "
        "192-bit 21 Gbps GDDR6X", ("4070",)),
    GPU("rtx-4070-ti-super", 16 * GiB, 88.2, 672, f"derived: 264 tensor cores × 2.61 GHz boost {_ADA_RATE}; "
        "256-bit 21 Gbps GDDR6X", ("4070ti-super", "4070tis")),
    GPU("rtx-4080", 16 * GiB, 97.5, 716.8, "NVIDIA Ada Lovelace whitepaper, RTX 4080 (16GB) column, FP16 "
        "tensor with FP32 accumulate", ("4080",)),
    GPU("rtx-4080-super", 16 * GiB, 104.4, 736, f"derived: 320 tensor cores × 2.55 GHz boost {_ADA_RATE}; "
        "256-bit 23 Gbps GDDR6X", ("4080s",)),
    GPU("rtx-4090", 24 * GiB, 165.2, 1008, "NVIDIA Ada Lovelace (AD102) whitepaper, RTX 4090 column",
        ("4090",)),
    GPU("rtx-5080", 16 * GiB, 112.6, 960, "derived: 336 tensor cores × 2.617 GHz boost × 128 FLOP/clk, the "
        "fp32-accumulate rate per core of the RTX Blackwell whitepaper's RTX 5090 column; 256-bit 30 Gbps "
        "GDDR7", ("5080",)),
    GPU("rtx-5090", 32 * GiB, 209.5, 1792, "NVIDIA RTX Blackwell GPU architecture whitepaper, RTX 5090",
        ("5090",)),
    GPU("a10", 24 * GiB, 125.0, 600, "NVIDIA A10 datasheet", ()),
    GPU("l4", 24 * GiB, 121.0, 300, "NVIDIA L4 datasheet", ()),
    GPU("t4", 16 * GiB, 65.0, 320, "NVIDIA T4 datasheet (fp16 tensor: T4 has no bf16)", ()),
    GPU("v100-32gb", 32 * GiB, 125.0, 900, "NVIDIA V100 datasheet, SXM2 32GB column (fp16 tensor: V100 has "
        "no bf16)", ("v100", "v100-sxm2")),
    GPU("a6000", 48 * GiB, 154.8, 768, "NVIDIA RTX A6000 datasheet", ("rtx-a6000",)),
    GPU("rtx-6000-ada", 48 * GiB, 364.2, 960, "derived from the NVIDIA RTX 6000 Ada datasheet's 1,457 TFLOPS "
        "tensor (FP8 with sparsity) ÷ 4: dense fp16/bf16 with FP32 accumulate (full rate on this "
        "professional card; 568 tensor cores × 2.505 GHz × 256)", ("6000-ada", "rtx6000-ada")),
    GPU("l40s", 48 * GiB, 362.05, 864, "NVIDIA L40S datasheet", ()),
    GPU("a100-40gb", 40 * GiB, 312.0, 1555, "NVIDIA A100 datasheet (40GB SXM/PCIe)", ("a100-40",)),
    GPU("a100-80gb", 80 * GiB, 312.0, 2039, "NVIDIA A100 datasheet (80GB SXM)", ("a100", "a100-80")),
    GPU("a100-pcie", 80 * GiB, 312.0, 1935, "NVIDIA A100 datasheet, 80GB PCIe column", ("a100-80gb-pcie",)),
    GPU("h100-pcie", 80 * GiB, 756.0, 2000, "NVIDIA H100 datasheet, PCIe column", ()),
    GPU("h100-sxm", 81559 * MiB, 989.0, 3350, "NVIDIA H100 datasheet, SXM column; memory as "
        "nvidia-smi reports an H100 80GB HBM3", ("h100",)),
    GPU("h200", 143771 * MiB, 989.0, 4800, "NVIDIA H200 datasheet (SXM); memory as nvidia-smi reports it",
        ()),
    GPU("b200", round(178.35 * GiB), 2250.0, 8000, "NVIDIA HGX B200 datasheet: 4.5 PFLOPS FP16/BF16 with "
        "sparsity (2.25 dense), 8 TB/s; memory as CUDA reports it (178.35 GiB, pytorch/ao PR #4002; "
        "datasheet: 180 GB)", ()),
    GPU("mi300x", 192 * GiB, 1307.4, 5300, "AMD Instinct MI300X datasheet: peak BF16 matrix 1,307.4 TFLOPS "
        "dense, 5.3 TB/s HBM3; memory the nominal 192 GB taken as GiB", ("amd-mi300x", "instinct-mi300x")),
]


GPUS = unique(((key, g) for g in _CATALOG for key in (g.name, *g.aliases)), "GPU name")


def gpu_names() -> list[str]:
    return [g.name for g in _CATALOG]


# a number then letters: "20GiB", "20 gib", "1e3GB", "-3GiB", "20 parsecs" (judged by custom_gpu)
_SIZE = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*([a-z]*)", re.IGNORECASE)
_UNITS = {"gb": ("GB", GB), "gib": ("GiB", GiB)}
_LARGEST = 64 * (1 << 40)  # 64 TiB: far above any one card, low enough that a typo is caught
CUSTOM = "custom-"


def custom_gpu(size: str) -> GPU:
    """A card known only by its memory: "20GiB" → custom-20GiB with 20 × 2^30 bytes and no compute or
    bandwidth figures (so no tokens/s projection). GB are 10^9 bytes, GiB 2^30."""
    text = size.strip()
    if text.lower().startswith(CUSTOM):
        text = text[len(CUSTOM):]
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"GPU memory size {size!r}: expected a number and GB or GiB, like 24GB or 20GiB")
    number, unit = m.groups()
    if unit.lower() not in _UNITS:
        raise ValueError(f"GPU memory size {size!r}: unit {unit or '(none)'!r} is not GB or GiB "
                         f"(GB = 10^9 bytes, GiB = 2^30), e.g. {number}GB or {number}GiB")
    unit, scale = _UNITS[unit.lower()]
    try:
        value = Decimal(number)
    except InvalidOperation:  # the pattern admits only decimals: defensive
        raise ValueError(f"GPU memory size {size!r}: {number!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"GPU memory size {size!r}: must be more than 0")
    exact = value * scale
    if exact < MiB:
        raise ValueError(f"GPU memory size {size!r}: less than 1 MiB, smaller than any GPU")
    if exact > _LARGEST:
        raise ValueError(f"GPU memory size {size!r}: more than 64 TiB, larger than any one GPU")
    shown = f"{value.normalize():f}"  # 20, 12.5, 1000 for 1e3: the name round-trips through get_gpu
    return GPU(f"{CUSTOM}{shown}{unit}", int(exact.to_integral_value()), None, None,
               f"a memory size given as the GPU ({shown} {unit}): no datasheet TFLOP/s or bandwidth")


def get_gpu(name: str) -> GPU:
    """A catalog card by name or alias ("4090" for rtx-4090), or a custom card from a memory size
    ("20GiB", "24 GB", "custom-20GiB")."""
    key = name.strip().lower()
    if key in GPUS:
        return GPUS[key]
    if "rtx-" + key in GPUS:
        return GPUS["rtx-" + key]
    if key.startswith(CUSTOM) or (_SIZE.fullmatch(key) and _SIZE.fullmatch(key).group(2)):
        return custom_gpu(name)
    need_unit = f"; a memory size needs its unit: {key}GB or {key}GiB" if _SIZE.fullmatch(key) else ""
    raise ValueError(f"unknown GPU {name!r}{need_unit}; known: {', '.join(gpu_names())} "
                     f"(aliases: {', '.join(a for g in _CATALOG for a in g.aliases)}); {SIZE_HINT}")


def _tokens(gpu: GPU) -> tuple[list[str], list[str]]:
    """(required, optional) name parts to find in a device name: "a100-80gb" needs "a100" and prefers
    "80gb"; the memory size and the form factor are often missing from it ("NVIDIA GeForce RTX 4060 Ti",
    "NVIDIA H100 80GB HBM3")."""
    parts = [p for p in gpu.name.split("-") if p != "rtx"]
    optional = [p for p in parts if p.endswith("gb") or p in ("sxm", "pcie")]
    return [p for p in parts if p not in optional], optional


def match_device_name(device_name: str) -> GPU | None:
    """The catalog entry for a torch.cuda device name such as 'NVIDIA H100 80GB HBM3', if any: the one
    whose name parts the device name holds, the most specific first ("RTX 4070 Ti SUPER" is not an RTX
    4070; "L40S" is not an L4); a PCIe card only for a PCIe device name and the other way round."""
    n = device_name.lower().replace(" ", "")
    best, score = None, 0
    for gpu in _CATALOG:
        required, optional = _tokens(gpu)
        if not all(p in n for p in required) or ("pcie" in gpu.name) != ("pcie" in n):
            continue
        s = sum(len(p) for p in required) + sum(len(p) for p in optional if p in n)
        if s > score:
            best, score = gpu, s
    return best
