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


# oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA, https://uxlfoundation.github.io/oneDNN/dev_guide_cpu_dispatcher_control.html),
# lowest first, and the first cap at which each flag may be used: a capped process behaves like a CPU
# without the flags above its cap, so busai picks that CPU's path (how an AVX2 machine is tried on a newer one).
ISA_CAPS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_AMX")
FLAG_MIN_CAP = {
    "avx2": "AVX2",
    "fma": "AVX2",
    "avx_vnni": "AVX2_VNNI",
    "avx512f": "AVX512_CORE",
    "avx512_vnni": "AVX512_CORE_VNNI",
    "avx512_bf16": "AVX512_CORE_BF16",
    "amx_tile": "AVX512_CORE_AMX",
    "amx_bf16": "AVX512_CORE_AMX",
    "amx_int8": "AVX512_CORE_AMX",
}
ISA_CAP_ENV = "ONEDNN_MAX_CPU_ISA"


def isa_cap() -> str | None:
    """The oneDNN ISA cap this process runs under (upper case), or None without one (``ALL`` / ``DEFAULT`` / unset / unknown)."""
    import os

    cap = os.environ.get(ISA_CAP_ENV, "").strip().upper()
    return cap if cap in ISA_CAPS else None


def cpu_flags() -> list[str]:
    """The :data:`RELEVANT_FLAGS` this CPU has, sorted (empty where /proc/cpuinfo is missing), less
    those above the process's oneDNN ISA cap (:func:`isa_cap`)."""
    flags = set(RELEVANT_FLAGS) & _cpuinfo()[1]
    cap = isa_cap()
    if cap is not None:
        flags = {f for f in flags if ISA_CAPS.index(FLAG_MIN_CAP[f]) <= ISA_CAPS.index(cap)}
    return sorted(flags)


def flags_known() -> bool:
    """Whether the CPU's flags could be read (/proc/cpuinfo: Linux)."""
    return bool(_cpuinfo()[1])


# --- The CPU inference path, chosen per machine -------------------------------------------------
# "bf16": channels_last with bf16 autocast, only where bf16 is native (emulated bf16 was 9x slower);
# "channels_last" and "contiguous": fp32 in either memory format. Which format is faster depends on
# the CPU and even on its load, so the first of each list is the default and a measured probe may
# only replace it by a clear margin.
PATHS = ("bf16", "channels_last", "contiguous")
PROBE_ENV = "BUSAI_PROBE"  # "1": measure the candidates once per machine and model (the busai command sets it)
CACHE_ENV = "BUSAI_CACHE_DIR"
PROBE_MARGIN = 0.15  # another path must be this much faster than the default to be chosen


def native_bf16(flags: set[str] | None = None) -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags() if flags is None else flags))


def candidate_paths(flags: set[str] | None = None) -> tuple[str, ...]:
    """The CPU paths worth trying on a CPU with ``flags`` (default: this one's), the default first."""
    return PATHS if native_bf16(flags) else PATHS[1:]


def cache_file():
    import os
    from pathlib import Path

    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "busai"
    return Path(root) / "inference_paths.json"


def machine_key() -> str:
    """What a measured choice holds for: the CPU, torch's version and its thread count."""
    import torch

    cap = f" | ISA cap {isa_cap()}" if isa_cap() else ""
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads{cap}"


def interleaved_best(calls: dict, rounds: int = 3) -> dict[str, float]:
    """Seconds of each of ``calls`` (name -> function of no argument): the best of ``rounds`` after one
    warm-up round (oneDNN and ONNX Runtime build their kernels on the first call), the calls interleaved
    so that a burst of load from elsewhere falls on all of them. What every probe here measures with."""
    import time

    best = dict.fromkeys(calls, float("inf"))
    for round_ in range(rounds + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def choose_path(model_key: str, probe=None) -> str:
    """The CPU path for the model ``model_key`` names: the flags' default, or with ``BUSAI_PROBE=1`` and a
    ``probe`` (path -> seconds per forward) the measured choice, cached per machine in :func:`cache_file`."""
    return choose(model_key, candidate_paths(), probe)


def choose(model_key: str, candidates: tuple[str, ...], probe=None) -> str:
    """One of ``candidates`` for the model ``model_key`` names: the first (the default), or with
    ``BUSAI_PROBE=1`` and a ``probe`` (candidates -> {candidate: seconds}) the fastest when it beats the
    default by :data:`PROBE_MARGIN`, measured once per machine and cached in :func:`cache_file`."""
    import json
    import os

    if probe is None or os.environ.get(PROBE_ENV) != "1" or len(candidates) == 1:
        return candidates[0]
    path, key = cache_file(), machine_key()
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    known = cache.get(key, {}).get(model_key)
    if isinstance(known, dict) and known.get("path") in candidates:
        return known["path"]
    seconds = probe(candidates)
    fastest = min(seconds, key=seconds.get)
    choice = fastest if seconds[fastest] < seconds[candidates[0]] * (1 - PROBE_MARGIN) else candidates[0]
    cache.setdefault(key, {})[model_key] = {"path": choice, "seconds": {k: round(v, 5) for k, v in seconds.items()}, "flags": cpu_flags()}
    try:
        from busai.outputs import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=2) + "\n")
    except OSError:  # a read-only home: measure again next time
        pass
    return choice
