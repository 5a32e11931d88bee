"""gpe_jax.hostmem: large freed host buffers stay mapped (no page faults when reused)."""
import os
import subprocess
import sys

import pytest

from gpe_jax import hostmem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child that runs a jitted program with a 64 MB temporary (the [4000, 4000] product, more than
# glibc's largest mmap threshold) eight times and prints the median page faults of the last
# five calls (now and then one call still finds the heap's free block too small and grows it).
_CHILD = r"""
import resource
from gpe_jax import hostmem
applied = hostmem.keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda a: jnp.sum(jnp.sin(a @ a.T) @ a))
a = jax.random.normal(jax.random.key(0), (4000, 64))
faults = []
for _ in range(8):
  f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(f(a))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(applied, sorted(faults[3:])[2])
"""


def _child(env_value: str) -> tuple[bool, int]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", GPE_JAX_MALLOC=env_value, XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_programs_temporaries_are_reused_without_page_faults():
  applied, faults = _child("")
  system, system_faults = _child("system")
  assert applied and not system
  pages = 4000 * 4000 * 4 // 4096
  assert system_faults > pages // 2     # glibc's own settings: a fresh mmap every call
  assert faults < pages // 10           # kept: the same pages again


def test_left_alone_when_told_or_when_a_device_may_be_used(monkeypatch):
  monkeypatch.setattr(hostmem, "_applied", False)
  monkeypatch.setenv(hostmem.ENV, "system")
  assert not hostmem.keep_freed_memory()
  monkeypatch.delenv(hostmem.ENV)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert not hostmem.keep_freed_memory()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert hostmem._accelerator_possible() is False
