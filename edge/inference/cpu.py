"""The CPU features that decide which kernels (and so which model variant) run fastest.

Reported with variant timings (``VariantReport.cpu_features``) so the coordinator can
tell hardware classes apart: int8 is fast with VNNI / dot-product instructions and slow
without them, float16 needs F16C or FP16 arithmetic, and so on.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["KERNEL_FEATURES", "cpu_features", "cpu_features_from_text"]

# x86 (the "flags" line of /proc/cpuinfo) and Arm ("Features") flags that LiteRT / XNNPACK
# kernels dispatch on. Anything else (e.g. "pse", "msr") says nothing about speed.
KERNEL_FEATURES = frozenset(
    {
        # x86
        "sse4_1",
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avxvnni",
        "amx_int8",
        "amx_bf16",
        # Arm: NEON is "neon" on 32-bit kernels and "asimd" on 64-bit ones
        "neon",
        "asimd",
        "asimdhp",
        "asimddp",
        "fphp",
        "i8mm",
        "bf16",
        "sve",
        "sve2",
    }
)
_FLAG_KEYS = ("flags", "features")


def cpu_features_from_text(cpuinfo: str) -> tuple[str, ...]:
    """The kernel-relevant flags in a ``/proc/cpuinfo`` text, lowercase and sorted.

    Only the first processor's flags are read (a heterogeneous big.LITTLE SoC lists the
    same ISA features on every core).
    """
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in _FLAG_KEYS:
            flags = {f.lower() for f in value.split()}
            return tuple(sorted(flags & KERNEL_FEATURES))
    return ()


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """This machine's kernel-relevant CPU flags; empty when they cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    return cpu_features_from_text(text)
