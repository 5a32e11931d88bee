"""Test set-up: 8 fake CPU devices (set before JAX initialises), and helpers to run the CLI."""
import os
import subprocess
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

import pytest  # noqa: E402

# One classifier cache for the whole test session (never the user's ~/.cache).
os.environ.setdefault("GPE_JAX_CACHE", tempfile.mkdtemp(prefix="gpe_jax_test_cache_"))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
HAVE_FASHION = os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))


def cli_env():
  """Environment for CLI subprocesses: one CPU device, quiet TF-style logs."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def run_cli(*args, timeout=300, env=None):
  """Run ``python -m gpe_jax.main ARGS`` from the repo root; returns CompletedProcess."""
  return subprocess.run([sys.executable, "-m", "gpe_jax.main", *args], cwd=REPO,
                        env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
  return run_cli
