"""ngl-profile: what every byte of the peak holds, and what it costs, for Natural GaLore and its peers."""
import logging

__version__ = "0.1.0"

# bitsandbytes' CPU backend warns at import that an optional 4-bit GEMM kernel package is missing;
# ngl-profile uses only its 8-bit optimizer ops, so the warning would be noise in every report.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = ["__version__", "estimate", "profile"]


def __getattr__(name: str):
    # the Python API (api.py) imports torch: loaded on first use, so `ngl-profile --help` stays instant
    if name in ("estimate", "profile"):
        from ngl_profile import api

        return getattr(api, name)
    raise AttributeError(f"module 'ngl_profile' has no attribute {name!r}")
