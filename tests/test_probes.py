"""The Hessian probes (gpe_jax/experiments/probes.py) and the scheduled curvature evaluators.

The full smoke run of all five probes through ``probes.run`` happens in the notebook test
(``notebooks/hessian_bounds.ipynb``); here: the probes that need no training, their pieces,
the evaluator plugins in the encoder and decoder stages, and the command line's errors.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from conftest import REPO, cli_env
from gpe_jax.experiments import probes
from gpe_jax.experiments import encoders


@pytest.fixture(scope="module")
def smoke_ctx():
  config = default.get_config("smoke")
  return config, encoders.load_context(config)


def test_collapse_probe_matches_prop2(smoke_ctx, tmp_path):
  config, ctx = smoke_ctx
  out = probes.probe_collapse(config, str(tmp_path), ctx, None)
  num = out["numbers"]
  n, d = num["points"], num["latent_dim"]
  assert num["grad_norm"] == 0.0
  # Every direction but the d translations has negative curvature, exactly as the closed form.
  assert num["negative_eigenvalues"] == num["expected_negative"] == (n - 1) * d
  assert num["max_abs_diff_closed_form"] <= 1e-5 * num["max_abs_hessian"]
  assert num["lambda_min_lanczos"] == pytest.approx(num["lambda_min_dense"], rel=1e-3)
  assert abs(num["lambda_max_dense"]) <= 1e-5 * abs(num["lambda_min_dense"])
  assert num["gme_drop_along_v_min"] > 0
  assert num["random_linear_maps_negative"] == "32/32"
  assert os.path.getsize(tmp_path / probes.figure_name("e")) > 0


def test_closed_form_is_negative_semidefinite():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 5)).astype(np.float32)
  h = probes.collapse_hessian_closed_form(x, 3)
  evals = np.linalg.eigvalsh(h)
  assert h.shape == (21, 21)
  assert np.allclose(h, h.T)
  assert evals[-1] == pytest.approx(0.0, abs=1e-9)
  assert np.sum(evals < -1e-9) == 6 * 3


def test_bilip_curve_counts_and_markov():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(40, 6))
  z = x[:, :3] * 1.3 + 0.05 * rng.normal(size=(40, 3))
  alphas = (1.1, 1.5, 2.0, 3.0)
  out = probes.bilip_curve(x, z, gme=0.0, alphas=alphas)
  iu = np.triu_indices(40, k=1)
  dx = np.square(x[:, None] - x[None]).sum(-1)[iu]
  dz = np.square(z[:, None] - z[None]).sum(-1)[iu]
  dev = np.abs(np.log1p(dx) - np.log1p(dz))
  for a, frac in zip(alphas, out["violating"]):
    assert frac == pytest.approx(np.mean(dev > math.log(a)), abs=1e-12)
  assert out["gme_pairs"] == pytest.approx(np.mean(dev ** 2), rel=1e-5)
  # Markov's inequality on the same pairs must hold; a zero GME claim must fail where pairs
  # do violate.
  same = probes.bilip_curve(x, z, gme=out["gme_pairs"], alphas=alphas)
  assert same["bound_holds"]
  assert (not out["bound_holds"]) == (max(out["violating"]) > 0)


def test_feature_decoder_conditioning_sees_collapse():
  """Latents spread like the data vs the same latents squeezed into two clusters: the
  random-feature reconstruction Hessian is far worse conditioned for the squeezed ones, and
  gradient descent makes less progress on it in the same number of steps."""
  import jax
  rng = np.random.default_rng(2)
  n, d = 400, 4
  z = rng.normal(size=(n, d))
  x = np.tanh(z @ rng.normal(size=(d, 12)))
  squeezed = np.sign(z[:, :1]) * np.ones((1, d)) + 1e-3 * z
  squeezed = (squeezed - squeezed.mean(0)) * np.sqrt(d / np.mean(np.sum(
      np.square(squeezed - squeezed.mean(0)), 1)))
  key = jax.random.key(0)
  good = probes.feature_decoder(z, x, 64, key, 50)
  bad = probes.feature_decoder(squeezed, x, 64, key, 50)
  assert good["condition"] < bad["condition"] / 100
  assert good["gd_excess"] < bad["gd_excess"]
  assert np.all(np.diff(good["gd_curve"]) <= 1e-12)    # step 1/lambda_max: monotone descent
  assert good["lambda_max"] == pytest.approx(good["eigenvalues"][-1])


def test_plugins_in_encoder_and_decoder_stages(cli, tmp_path):
  proc = cli("--config=configs/default.py:smoke", f"--workdir={tmp_path}",
             "--config.stages=('encoder','decoder')", "--config.encoder.num_steps=6",
             "--config.encoder.eval_every=2", "--config.encoder.evals_every=4",
             "--config.encoder.evals=('hessian','hessian_mds','bilip')",
             "--config.decoder.evals=('hessian',)")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  enc = [r for r in rows if r.get("stage") == "encoder" and "val_gme" in r]
  hess = [r for r in enc if "hess_gme_min" in r]
  # Evaluations at steps 2, 4, 6; the plugins at multiples of 4 and at the last step.
  assert [r["step"] for r in enc] == [2, 4, 6]
  assert [r["step"] for r in hess] == [4, 6]
  for r in hess:
    assert r["hess_gme_min"] <= r["hess_gme_max"]
    assert r["hess_mds_min"] <= r["hess_mds_max"]
    assert r["hess_gme_batch"] > 0
    assert 0.0 <= r["weak_bilip_frac_a1.5"] <= 1.0
  dec = [r for r in rows if r.get("stage") == "decoder" and "hess_recon_max" in r]
  assert dec and all(r["hess_recon_min"] <= r["hess_recon_max"] for r in dec)
  assert all(r["hess_recon_max"] > 0 for r in dec)


def test_unknown_plugin_and_probe_names_are_user_errors(cli, tmp_path):
  proc = cli("--config=configs/default.py:smoke", f"--workdir={tmp_path / 'a'}",
             "--config.decoder.evals=('hesian',)")
  assert proc.returncode == 2
  assert "config.decoder.evals" in proc.stderr and "hesian" in proc.stderr
  proc = subprocess.run(
      [sys.executable, "-m", "gpe_jax.experiments.probes", "--config=configs/default.py:smoke",
       f"--workdir={tmp_path / 'b'}", "--config.probes.which=az"], cwd=REPO, env=cli_env(),
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "config.probes.which" in proc.stderr and "'z'" in proc.stderr
