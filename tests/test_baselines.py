"""Baselines (VAE, AE, VAE+MDS, AE+MDS): their loss terms against NumPy/numerical references,
sharding, and each one through the CLI: train, prior, sample, evaluate, exact resume."""
import json
import os

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict
from scipy import integrate

from conftest import run_cli
from gpe_jax import costs
from gpe_jax.stages import baselines
from test_cli import SMOKE, assert_kill_resumes_exactly
from test_models_and_sharding import assert_one_device_equals_eight


def test_kl_matches_numerical_integration():
  """KL(N(m, s^2) || N(0, 1)) per dimension by quadrature, summed over dimensions."""
  mean = np.array([[0.0, 1.5, -0.7]], np.float32)
  logvar = np.array([[0.0, -1.2, 0.8]], np.float32)
  total = 0.0
  for m, lv in zip(mean[0], logvar[0]):
    s = np.exp(0.5 * float(lv))
    q = lambda x: np.exp(-0.5 * ((x - m) / s) ** 2) / (s * np.sqrt(2 * np.pi))
    logq = lambda x: -0.5 * ((x - m) / s) ** 2 - np.log(s * np.sqrt(2 * np.pi))
    logp = lambda x: -0.5 * x ** 2 - 0.5 * np.log(2 * np.pi)
    val, _ = integrate.quad(lambda x: q(x) * (logq(x) - logp(x)), m - 12 * s, m + 12 * s)
    total += val
  np.testing.assert_allclose(float(costs.gaussian_kl_per_example(mean, logvar)[0]), total,
                             rtol=1e-5)


def test_mds_stress_zero_for_isometry_and_positive_otherwise():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20, 3)).astype(np.float32)
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  assert float(costs.mds_stress(x, x @ q.astype(np.float32) + 2.0)) < 1e-8
  assert float(costs.mds_stress(x, 2.0 * x)) > 0.1


def mlp_cfg():
  return ConfigDict(dict(kind="mlp", latent_dim=3, enc_hidden=(16,), dec_hidden=(16,),
                         layer_norm=False, enc_features=(8,), dec_features=(8,),
                         batch_norm=False, extra_convs=0))


def stage_cfg():
  return ConfigDict(dict(lr=1e-3, b1=0.5, b2=0.999, grad_clip=0.0, warmup_steps=0,
                         lr_schedule="constant", num_steps=10))


@pytest.mark.parametrize("name", baselines.NAMES)
def test_joint_loss_matches_a_numpy_recomputation(name):
  """The step's reported loss = MSE + beta KL / D + lambda stress, recomputed by hand."""
  shape, beta, lam = (12,), 0.7, 0.05
  config = ConfigDict(dict(model=mlp_cfg(), **{name: stage_cfg()}))
  enc, dec, tx = baselines.build(config, name, shape)
  variational = name in baselines.VARIATIONAL
  init = baselines.make_init_fn(enc, dec, tx, shape, 3)
  state = init(jax.random.key(0))
  x = np.random.default_rng(1).uniform(-1, 1, (8,) + shape).astype(np.float32)
  step = baselines.make_train_step(enc, dec, tx, variational, beta,
                                   lam if name in baselines.WITH_MDS else 0.0)
  _, metrics = step(state, {"x": x})

  h = np.asarray(enc.apply({"params": state.params["encoder"]}, x, train=True), np.float64)
  if variational:
    mean, logvar = h[:, :3], h[:, 3:]
    eps = np.asarray(jax.random.normal(state.step_key(), (8, 3)), np.float64)
    z = mean + np.exp(0.5 * logvar) * eps
    kl = np.mean(0.5 * np.sum(np.exp(logvar) + mean ** 2 - 1 - logvar, axis=1))
  else:
    mean = z = h
    kl = 0.0
  x_hat = np.asarray(dec.apply({"params": state.params["decoder"]}, z.astype(np.float32),
                               train=True), np.float64)
  expected = np.mean((x_hat - x) ** 2) + (beta * kl / 12 if variational else 0.0)
  if name in baselines.WITH_MDS:
    dx = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    dz = np.sqrt(((mean[:, None] - mean[None]) ** 2).sum(-1))
    expected += lam * np.mean((dz - dx) ** 2)
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=2e-4)


def test_vae_step_one_device_equals_eight():
  shape = (8, 8, 1)
  cfg = ConfigDict(dict(kind="conv", latent_dim=6, enc_hidden=(32,), dec_hidden=(32,),
                        layer_norm=False, enc_features=(8, 16), dec_features=(16, 8),
                        batch_norm=True, extra_convs=0))
  config = ConfigDict(dict(model=cfg, vae_mds=stage_cfg()))
  enc, dec, tx = baselines.build(config, "vae_mds", shape)
  make = (baselines.make_init_fn(enc, dec, tx, shape, 6),
          baselines.make_train_step(enc, dec, tx, True, 1.0, 0.01))
  rng = np.random.default_rng(0)
  batches = [{"x": rng.uniform(-1, 1, (16,) + shape).astype(np.float32)} for _ in range(2)]
  assert_one_device_equals_eight(make, batches)


# One variational and one MDS baseline through the CLI (their two code paths); 'ae' runs
# through prior, sample and evaluate in tests/test_workdir.py (the method switch).
@pytest.mark.parametrize("name", ["vae", "ae_mds"])
def test_baseline_through_prior_sample_evaluate(name, tmp_path):
  wd = str(tmp_path / name)
  res = run_cli(SMOKE, f"--workdir={wd}", f"--config.method={name}",
                f"--config.stages=('{name}','prior','sample','evaluate')")
  assert res.returncode == 0, res.stderr[-3000:]
  summary = json.load(open(os.path.join(wd, "summary.json")))
  base = summary[name]
  assert base["steps"] == 4 and np.isfinite(base["val_recon_mse"])
  assert np.isfinite(base["gme_all_pairs"]) and "weak_bilip_frac_a1.5" in base
  for f in ("latent_stats.npz", "reconstructions.png", "latent_scatter.png", "done.json"):
    assert os.path.getsize(os.path.join(wd, name, f)) > 0
  rows = [r for r in map(json.loads, open(os.path.join(wd, "metrics.jsonl"))) if "loss" in r]
  assert {r["stage"] for r in rows} == {name, "prior"}
  if name in baselines.VARIATIONAL:
    assert all("kl" in r for r in rows if r["stage"] == name)
  if name in baselines.WITH_MDS:
    assert all("mds_stress" in r for r in rows if r["stage"] == name)
  assert summary["prior"]["method"] == name
  assert summary["evaluate"]["protocol"]["method"] == name
  assert np.isfinite(summary["evaluate"]["fd_classifier_prior"])
  assert np.load(os.path.join(wd, "sample", "samples.npz"))["x"].shape == (64, 8, 8, 1)
  # a rerun skips the finished baseline
  res = run_cli(SMOKE, f"--workdir={wd}", f"--config.method={name}",
                f"--config.stages=('{name}',)")
  assert res.returncode == 0 and f"{name}: already finished" in res.stderr


def test_killed_vae_resumes_to_identical_parameters(tmp_path):
  assert_kill_resumes_exactly(
      tmp_path, [SMOKE, "--config.vae_mds.num_steps=6", "--config.stages=('vae_mds',)"],
      "vae_mds")


def test_method_without_its_stage_is_a_clear_error(tmp_path):
  res = run_cli(SMOKE, f"--workdir={tmp_path / 'wd'}", "--config.method=ae",
                "--config.stages=('prior','sample','evaluate')", timeout=120)
  assert res.returncode == 2
  assert "'ae'" in res.stderr and "config.stages" in res.stderr
  res = run_cli(SMOKE, f"--workdir={tmp_path / 'wd'}", "--config.method=flowgan",
                "--config.stages=('encoder',)", timeout=120)
  assert res.returncode == 2 and "vae_mds" in res.stderr
