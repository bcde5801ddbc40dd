"""Giving the C heap's free pages back to the OS during long CPU runs.

A CPU training step allocates and frees many large buffers (activations, logits, gradients). glibc
serves those below its mmap threshold from the heap, and that threshold rises (up to 32 MiB) each
time a larger mmapped block is freed; the heap only shrinks from its top, so a long run's resident
memory grows with free but retained pages. Measured on the SmolLM2 graft run: 11.1 GB resident
after 20 minutes, 4.5 GB straight after one ``malloc_trim(0)`` (docs/training.md, "Memory on the
CPU"). :func:`release_free_heap` calls it; on a C library without it (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["release_free_heap", "heap_trim_enabled"]

_trim = None  # the C function once looked up; False where there is none


def _malloc_trim():
    global _trim
    if _trim is None:
        _trim = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None).malloc_trim  # the process's own C library (glibc has it)
                fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
                _trim = fn
            except (OSError, AttributeError):
                pass
    return _trim or None


def heap_trim_enabled() -> bool:
    """Whether training trims the heap after each CPU step: on unless ``OMNILOOM_TRIM_HEAP=0``, and
    only where the C library has ``malloc_trim``."""
    return os.environ.get("OMNILOOM_TRIM_HEAP", "1") != "0" and _malloc_trim() is not None


def release_free_heap() -> bool:
    """Return the heap's free pages to the OS; True when some memory was released."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
