"""The one numba setting of every engine kernel.

cache=True: compiled code is kept on disk (NUMBA_CACHE_DIR), so a build compiles each kernel once;
nogil=True: the frame workers are threads, and a kernel must let the others run;
fastmath=False: IEEE arithmetic, so the shards are bit-identical on every x86-64 CPU.
"""

from __future__ import annotations

from numba import njit

JIT_OPTIONS = dict(cache=True, nogil=True, fastmath=False)


def kernel(fn):
    """Compile `fn` with JIT_OPTIONS (use as a decorator: `@kernel`)."""
    return njit(**JIT_OPTIONS)(fn)
