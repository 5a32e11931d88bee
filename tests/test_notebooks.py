"""The notebooks in notebooks/: they run headless at small size, and are committed clean.

The notebooks are executed in a Jupyter kernel of this interpreter (a ``python3`` kernelspec
written to a temporary directory and put first on ``JUPYTER_PATH``, so a ``python3`` kernel
registered elsewhere for another interpreter is never picked up), with
``GPE_JAX_NOTEBOOK_SIZE=small`` and a temporary ``GPE_JAX_NOTEBOOK_WORKDIR``.
"""
import os
import subprocess
import sys
import time
import types

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
INSTALL_URL = "https://github.com/gpe-jax/gpe_jax.git"
CELL_TIMEOUT = 600   # seconds per cell
STARTUP_TIMEOUT = 180

# Each notebook and the files it must leave in its workdir.
NOTEBOOKS = {
    "gme_toy.ipynb": ("fig3.png", "pair_distances.png", "collapse_curvature.png", "report.md",
                      "numbers.json"),
    "hessian_bounds.ipynb": ("probe_a_scaling.png", "probe_b_training.png",
                             "probe_c_decoder.png", "probe_d_bilip.png", "probe_e_collapse.png",
                             "report.md", "numbers.json"),
}


def read(name):
  return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
  """Sets up the environment the kernel inherits; returns the kernel name.

  The kernel gets one CPU device (the 8 fake devices of conftest.py are for this process), the
  checkout first on PYTHONPATH (so ``gpe_jax`` and ``configs`` are this checkout's), and
  conftest's test cache (``GPE_JAX_CACHE``).
  """
  from ipykernel.kernelspec import write_kernel_spec
  data_dir = str(tmp_path / "jupyter")
  write_kernel_spec(os.path.join(data_dir, "kernels", "python3"),
                    overrides={"display_name": "Python 3 (gpe_jax tests)"})
  monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
      p for p in (data_dir, os.environ.get("JUPYTER_PATH", "")) if p))
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p))
  monkeypatch.setenv("GPE_JAX_NOTEBOOK_SIZE", "small")
  return "python3"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs(name, kernel_env, tmp_path, monkeypatch):
  workdir = tmp_path / "workdir"
  monkeypatch.setenv("GPE_JAX_NOTEBOOK_WORKDIR", str(workdir))
  nb = read(name)
  client = NotebookClient(nb, kernel_name=kernel_env, timeout=CELL_TIMEOUT,
                          startup_timeout=STARTUP_TIMEOUT,
                          resources={"metadata": {"path": NOTEBOOK_DIR}})
  t0 = time.perf_counter()
  client.execute()   # raises CellExecutionError, with the cell's traceback, on any error
  print(f"{name}: executed in {time.perf_counter() - t0:.1f} s")

  cells = code_cells(nb)
  assert all(c.execution_count is not None for c in cells)
  errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
  assert not errors, errors
  figures = [f for f in NOTEBOOKS[name] if f.endswith(".png")]
  shown = [o for c in cells for o in c.outputs if "image/png" in o.get("data", {})]
  assert len(shown) >= len(figures)
  for fname in NOTEBOOKS[name]:
    path = workdir / fname
    assert path.is_file() and path.stat().st_size > 0, f"{name} did not write {fname}"
  if name == "hessian_bounds.ipynb":
    _check_probe_numbers(workdir / "numbers.json")


def _check_probe_numbers(path):
  """The notebook is also the smoke run of all five probes: check what each measured."""
  import json
  import math
  with open(path) as f:
    numbers = json.load(f)
  assert set("abcde") <= set(numbers)
  # (a) the squared-distance cost's curvature grows ~beta^2, the GME's does not grow.
  for enc in numbers["a"]["encoders"].values():
    for space in ("points", "linear"):
      assert enc[f"sqdist_{space}"]["slope_beta_ge_1"] > 1.5
      assert enc[f"gme_{space}"]["slope_beta_ge_1"] < 0.5
  # (b) one Hessian evaluation per scheduled evaluation, ordered extremes.
  b = numbers["b"]
  assert len(b["steps"]) >= 2 and len(b["lambda_min"]) == len(b["steps"])
  assert all(lo <= hi for lo, hi in zip(b["lambda_min"], b["lambda_max"]))
  # (c) a finite condition number and a decoder curve per encoder (GPE stops + the VAE).
  c = numbers["c"]["encoders"]
  assert any(v["method"] == "vae" for v in c.values()) and len(c) >= 2
  for v in c.values():
    assert v["feature_lambda_max"] >= v["feature_lambda_min"] > 0
    assert math.isfinite(v["feature_condition"]) and v["val_curve"]["steps"]
  # (d) Markov's inequality on the very pairs it counts cannot fail.
  assert all(v["same_pairs"]["bound_holds"] for v in numbers["d"]["encoders"].values())
  # (e) Prop. 2: every non-translation direction has negative curvature.
  e = numbers["e"]
  assert e["negative_eigenvalues"] == e["expected_negative"]
  assert e["grad_norm"] == 0.0 and e["gme_drop_along_v_min"] > 0


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_notebook_is_clean(name, monkeypatch):
  nb = read(name)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  cells = code_cells(nb)
  for cell in cells:
    assert cell.outputs == [], cell.source[:80]
    assert cell.execution_count is None, cell.source[:80]
    assert "execution" not in cell.metadata

  # The first code cell installs the package in Colab and does nothing elsewhere.
  install = cells[0].source
  assert '"google.colab" in sys.modules' in install and INSTALL_URL in install
  calls = []
  monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: calls.append(args))
  monkeypatch.delitem(sys.modules, "google.colab", raising=False)
  exec(compile(install, "install-cell", "exec"), {})
  assert calls == []
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  monkeypatch.setattr(sys, "path", list(sys.path))   # the cell puts the checkout on it
  exec(compile(install, "install-cell", "exec"), {})
  assert len(calls) == 1 and INSTALL_URL in " ".join(calls[0][0])
  assert "pip install -q -e" in " ".join(calls[0][0])

  # The parameter cell reads the size and the workdir from the environment.
  source = "\n".join(c.source for c in cells)
  assert 'os.environ.get("GPE_JAX_NOTEBOOK_SIZE", "full")' in source
  assert 'os.environ.get("GPE_JAX_NOTEBOOK_WORKDIR",' in source
