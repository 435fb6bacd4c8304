"""What the CPU offers, read once: its model name and the instruction-set flags that decide the inference path."""

from __future__ import annotations

import functools
import platform

# The flags that change which path is fastest: vector width (AVX2, AVX-512), native bf16 (AVX512-BF16,
# AMX) and 8-bit dot products (VNNI). Benchmarks record them beside their results.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
    except OSError:  # not Linux: no flags known, and every choice falls back to the safe one
        pass
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> list[str]:
    """The :data:`RELEVANT_FLAGS` this CPU has, sorted (empty where /proc/cpuinfo is missing)."""
    return sorted(set(RELEVANT_FLAGS) & _cpuinfo()[1])
