"""Host memory for long runs: freed blocks kept for reuse instead of returned to the
system.

glibc's malloc serves every allocation past a threshold (which it raises to at most
32 MiB by itself) with a fresh `mmap`, and hands freed memory at the top of its heap back
to the system. Each new page then faults in again, zero-filled, at about 1.5 us a page. A
training step allocates and frees the same large activations every time, so it pays that
on every step: at the `large` size of benchmarks/speed.py (16 frames of 64x64, CPU, two
threads) about 2.5 million page faults a step, 8.9 s against 3.6 s once the memory is
kept. The process then holds on to its peak memory, as PyTorch's CUDA caching allocator
does on a GPU.
"""

from __future__ import annotations

import ctypes
import platform

from .checks import check_int

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_NEVER_TRIM = -1
_C_INT_MAX = 2**31 - 1  # mallopt takes a C int


def keep_freed_host_memory(mmap_threshold: int = 2**30) -> bool:
    """Make glibc's malloc serve allocations under `mmap_threshold` bytes from its heap and
    keep the memory they free for the next ones (`mallopt`; much as starting the
    process with `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...`).
    Affects the whole process, from now on. The `video-diffusion` command calls it.

    Returns whether it took effect: False where the C library is not glibc, or where this
    glibc refuses so high a threshold (before version 2.36 or so it takes at most 32 MiB);
    then nothing is changed. A threshold that is not a positive C int is a clear error.
    """
    check_int("mmap_threshold", mmap_threshold)
    if mmap_threshold > _C_INT_MAX:
        raise ValueError(f"mmap_threshold must be at most {_C_INT_MAX} bytes (a C int), got {mmap_threshold}")
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    # the threshold first: setting the trim threshold alone would also freeze the mmap
    # threshold at its 128 KiB default
    if not mallopt(_M_MMAP_THRESHOLD, mmap_threshold):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
