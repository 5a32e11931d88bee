"""gpe_jax.hostmem: large freed host buffers stay mapped (no page faults when reused)."""
import os
import subprocess
import sys

import pytest

from gpe_jax import hostmem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child that allocates, touches and frees a 96 MiB buffer (more than glibc's largest mmap
# threshold) from a second thread, as XLA:CPU's executor does with a program's temporaries,
# and prints the page faults of the last of five rounds.
_CHILD = r"""
import ctypes, resource, sys, threading
from gpe_jax import hostmem
applied = hostmem.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size, faults = 96 << 20, []
def one_round():
  f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(size)
  ctypes.memset(p, 1, size)
  libc.free(p)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
for _ in range(5):
  t = threading.Thread(target=one_round); t.start(); t.join()
print(applied, faults[-1])
"""


def _child(env_value: str) -> tuple[bool, int]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", GPE_JAX_MALLOC=env_value)
  out = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_buffers_are_reused_without_page_faults():
  applied, faults = _child("")
  system, system_faults = _child("system")
  assert applied and not system
  pages = (96 << 20) // 4096
  assert system_faults > pages // 2     # glibc's own settings: a fresh mmap every round
  assert faults < pages // 50           # kept: the same pages again


def test_left_alone_when_told_or_when_a_device_may_be_used(monkeypatch):
  monkeypatch.setattr(hostmem, "_applied", False)
  monkeypatch.setenv(hostmem.ENV, "system")
  assert not hostmem.keep_freed_memory()
  monkeypatch.delenv(hostmem.ENV)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert not hostmem.keep_freed_memory()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert hostmem._accelerator_possible() is False
