"""Host memory for XLA:CPU: keep large freed buffers in the process instead of unmapping them.

XLA:CPU allocates a program's temporary buffers afresh on every call and frees them after it.
glibc's malloc serves a request above its mmap threshold (which adapts, up to 32 MiB), and any
request from a thread whose arena heap cannot hold it (64 MiB), with a fresh ``mmap`` that
``free`` unmaps again, so each call of such a program writes into new pages: one page fault
per 4 KiB, with the kernel zeroing each page first. Measured on a 2-core AMD EPYC,
``value_and_grad(costs.gme_cost)`` at n = 2000, D = 3072: 22,520 page faults (a 92 MB
temporary) and 104-123 ms per call; with ``keep_freed_memory`` no fault and 81-98 ms; the
MNIST-sized decoder step of ``bench.py dec`` 0.43-0.51 s before, 0.38-0.46 s after
(benchmarks/README.md).

``keep_freed_memory`` sets glibc's malloc (``mallopt``) so that large blocks come from the main
heap too (``M_MMAP_MAX`` 0) and up to ``TRIM_THRESHOLD`` bytes freed at its top stay mapped for
the next call (``M_TRIM_THRESHOLD``, ``M_TOP_PAD``), and has jax run single-device CPU programs
on the calling thread (``jax_cpu_enable_async_dispatch`` off): the main thread allocates from
the main heap, while any other thread's arena hands a block above its 64 MiB heap to ``mmap``
whatever the settings. (Putting every thread on the main heap instead, ``M_ARENA_MAX`` 1, also
removes the faults but made the Fashion-MNIST encoder step 6-8% slower, 9.4-9.8 ms against
8.8-9.0; running on the calling thread cost that step nothing measurable: 8.8-8.9 ms.) The
commands (``cli.run``), the benchmarks and the tests call it at start. It changes no number,
only where buffers live and when Python gets control back: a jitted call now returns when its
result is ready, as ``block_until_ready`` would (programs sharded over several devices are
still dispatched asynchronously). The process returns freed memory to the system less
eagerly (its resident size stays near its peak).

It does nothing (returns False) off glibc, where an accelerator plugin is installed and
``JAX_PLATFORMS`` does not restrict jax to the CPU (the host then mostly feeds the device), or
when ``GPE_JAX_MALLOC=system``.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

ENV = "GPE_JAX_MALLOC"
# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
# Freed memory at the heap's top kept for reuse, and the extra the heap grows by at a time.
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20
_applied = False


def _accelerator_possible() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms != "cpu"
  # jax finds its device plugins (CUDA, ROCm, ...) as ``jax_plugins`` entry points; TPUs need libtpu.
  return (bool(importlib.metadata.entry_points(group="jax_plugins"))
          or importlib.util.find_spec("libtpu") is not None)


def keep_freed_memory() -> bool:
  """Set glibc's malloc to keep large freed buffers mapped (module docstring); returns whether
  the settings are in effect in this process. Idempotent."""
  global _applied
  if _applied:
    return True
  if (os.environ.get(ENV, "").strip().lower() == "system" or not sys.platform.startswith("linux")
      or _accelerator_possible()):
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  # glibc only
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  if not all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_MAX, 0),
                                              (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                              (_M_TOP_PAD, TOP_PAD))):
    return False
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  _applied = True
  return True
