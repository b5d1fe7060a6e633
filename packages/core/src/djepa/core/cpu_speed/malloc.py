"""Keep freed host memory mapped (glibc ``mallopt``) so CPU forwards stop page-faulting.

PyTorch's CPU tensors come from plain ``malloc``/``free``. glibc serves large blocks with
``mmap`` (above ``M_MMAP_THRESHOLD``, dynamic between 128 KiB and 32 MiB) and hands free memory
at the top of the heap back to the kernel (above ``M_TRIM_THRESHOLD``). A transformer forward
allocates and frees the same activation sizes over and over, so every one of them is mapped,
page-faulted and zeroed by the kernel again. On the project's 2-core VM that made
``gelu(fc1(x))`` on a ``[16, 128, 1024]`` bf16 activation take 3.9 ms instead of 1.2 ms, and
one reference-tiny backbone pass 62 ms instead of 54 ms (``docs/results/speed.md``).

:func:`keep_freed_memory` raises both thresholds once per process, so freed blocks stay in
the heap and are reused, which is what a caching allocator (jemalloc, tcmalloc, PyTorch's CUDA
allocator) does. The PyTorch CPU performance-tuning guide recommends an ``LD_PRELOAD``-ed
jemalloc/tcmalloc for the same reason; ``mallopt`` needs no preload. The cost: the process keeps
its peak heap size until it exits instead of shrinking after a spike, and while the heap settles
it can hold a few spare copies of the largest block (48 MiB blocks allocated in a loop: RSS
settles 190 MiB higher after 10 cycles, then stays flat).

:func:`djepa.core.cpu_speed.install` calls it for ``SpeedSettings(malloc="keep")``: every
``djepa`` CLI with ``--cpu-speed on`` (the default), the benchmarks unless ``--malloc system``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["keep_freed_memory", "DEFAULT_THRESHOLD_BYTES"]

#: Blocks below this size come from the heap and stay mapped after ``free``; also the most
#: free heap a process keeps (256 MiB: above reference-tiny's largest activations, bounded
#: for DataLoader workers, which inherit the setting).
DEFAULT_THRESHOLD_BYTES = 256 << 20
#: glibc's documented maximum of ``M_MMAP_THRESHOLD`` on 64-bit (older versions refuse more).
_DOCUMENTED_MMAP_MAX = 32 << 20

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_applied: int | None = None


def _reason_to_skip() -> str | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) \
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "malloc thresholds set by the user (MALLOC_*_THRESHOLD_ / GLIBC_TUNABLES)"
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "another allocator is preloaded"
    return None


def keep_freed_memory(threshold_bytes: int = DEFAULT_THRESHOLD_BYTES) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to ``threshold_bytes``.

    Process-wide and idempotent (later calls with the same value do nothing).

    Args:
        threshold_bytes: allocations up to this many bytes reuse heap memory; a heap top up to
            this size is kept after ``free``. Must be in ``[1, 2**31 - 1]`` (``mallopt`` takes
            an ``int``).

    Returns:
        True when the settings are in effect; False when nothing was changed: not Linux/glibc,
        the user already set ``MALLOC_MMAP_THRESHOLD_`` /
        ``MALLOC_TRIM_THRESHOLD_`` / ``GLIBC_TUNABLES=glibc.malloc…``, jemalloc/tcmalloc/
        mimalloc is in ``LD_PRELOAD``, or glibc refused both values. A glibc that refuses an
        mmap threshold above its documented 32 MiB maximum gets 32 MiB.

    Raises:
        ValueError: ``threshold_bytes`` out of range.
    """
    global _applied
    if not 1 <= threshold_bytes <= 2**31 - 1:
        raise ValueError(f"threshold_bytes must be in [1, 2**31 - 1], got {threshold_bytes}")
    if _applied == threshold_bytes:
        return True
    if _reason_to_skip() is not None:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Setting M_MMAP_THRESHOLD also turns off glibc's dynamic threshold.
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, threshold_bytes) == 1 or (
        threshold_bytes > _DOCUMENTED_MMAP_MAX and mallopt(_M_MMAP_THRESHOLD, _DOCUMENTED_MMAP_MAX) == 1)
    trim_ok = mallopt(_M_TRIM_THRESHOLD, threshold_bytes) == 1
    ok = mmap_ok and trim_ok
    _applied = threshold_bytes if ok else None
    return ok
