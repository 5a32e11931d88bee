"""Test set-up: 8 fake CPU devices (set before JAX initialises), and helpers to run the CLI."""
import os
import subprocess
import sys

# The tests compile far more than they run (tiny models, a few steps each), so XLA:CPU runs
# without its expensive optimisation passes: measured 2-4x less wall time per test, the same
# numbers to float rounding (every comparison in the suite is between runs compiled alike or
# within a tolerance). GPE_JAX_TEST_FULL_XLA=1 keeps the optimising compiler.
FAST_COMPILE = ("" if os.environ.get("GPE_JAX_TEST_FULL_XLA") else
                "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8 " + FAST_COMPILE).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

import pytest  # noqa: E402

# One classifier cache for the whole test session (never the user's ~/.cache).
os.environ.setdefault("GPE_JAX_CACHE", tempfile.mkdtemp(prefix="gpe_jax_test_cache_"))

# One XLA compilation cache for the test runs, shared by the pytest workers and every CLI
# subprocess they start, and kept between runs (outside the checkout, so a fresh clone finds it
# warm): many tests compile the same programs (a smoke run's stages, the experiments'
# variants), and a cached executable loads in a fraction of its compile time. An entry is keyed
# by the program, the XLA flags and the jax version, so it changes no number; the cache is
# kept under 2 GiB (least recently used entries go first), pruned once when a test session
# starts (``cli.prune_compilation_cache``) rather than by jax, whose bound lists the whole
# folder before each write: a cold suite spent minutes in it. JAX_COMPILATION_CACHE_DIR= turns
# the cache off.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
    "gpe_jax", "jax_test_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if os.environ["JAX_COMPILATION_CACHE_DIR"]:   # JAX_COMPILATION_CACHE_DIR= turns it off
  os.makedirs(os.environ["JAX_COMPILATION_CACHE_DIR"], exist_ok=True)
  if "PYTEST_XDIST_WORKER" not in os.environ:   # the controlling process, once per session
    from gpe_jax import cli as _cli  # noqa: E402
    _cli.prune_compilation_cache(os.environ["JAX_COMPILATION_CACHE_DIR"])

# Large freed host buffers kept mapped, as the commands do (gpe_jax.hostmem), in every pytest
# process before its XLA backend starts. It imports jax, which reads its JAX_* settings when
# imported: so after all of them.
from gpe_jax import hostmem as _hostmem  # noqa: E402
_hostmem.keep_freed_memory()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
HAVE_FASHION = os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))


def cli_env():
  """Environment for CLI subprocesses: one CPU device, the fast-compiling XLA flags."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = FAST_COMPILE
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def run_cli(*args, timeout=300, env=None):
  """Run ``python -m gpe_jax.main ARGS`` from the repo root; returns CompletedProcess."""
  return subprocess.run([sys.executable, "-m", "gpe_jax.main", *args], cwd=REPO,
                        env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
  return run_cli
