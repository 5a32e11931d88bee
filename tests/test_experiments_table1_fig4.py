"""Smoke runs of the Table 1 and Fig. 4 experiments through their command lines."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cli_env
from gpe_jax.experiments import encoders


def _run_experiment(name, workdir):
  proc = subprocess.run(
      [sys.executable, "-m", f"gpe_jax.experiments.{name}", "--config=configs/default.py:smoke",
       f"--workdir={workdir}"], cwd=REPO, env=cli_env(), capture_output=True, text=True,
      timeout=240)
  assert proc.returncode == 0, proc.stderr[-4000:]
  for fname in ("report.md", "numbers.json", f"{name}.png"):
    assert os.path.getsize(os.path.join(workdir, fname)) > 0, fname
  with open(os.path.join(workdir, "numbers.json")) as f:
    return json.load(f)


def _check_stops(workdir, numbers):
  """Each GPE encoder is a stop of the encoder's curve, and an earlier stop's rerun stopped
  (by target_loss) exactly there, restoring to the GME its run measured."""
  curve = dict(zip(numbers["encoder_curve"]["steps"], numbers["encoder_curve"]["val_gme"]))
  final = numbers["encoder_curve"]["steps"][-1]
  gpe = {k: r for k, r in numbers["encoders"].items() if k.startswith("decoder_gpe_step")}
  assert gpe
  for name, row in gpe.items():
    step = row["encoder_step"]
    assert name == f"decoder_gpe_step{step}" and step in curve
    assert row["gme"] == pytest.approx(row["gme_in_run"], rel=1e-2)
    assert row["gme"] == pytest.approx(curve[step], rel=1e-2)
    if step == final:
      assert row["encoder_run"] == encoders.ENCODER_VARIANT
    else:
      assert row["encoder_run"] == f"{encoders.ENCODER_VARIANT}_stop{step}"
      with open(os.path.join(workdir, row["encoder_run"], "summary.json")) as f:
        enc = json.load(f)["encoder"]
      assert enc["stopped_by"] == "target_loss" and enc["steps"] == step
  return gpe


def _finite(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_table1_smoke(tmp_path):
  numbers = _run_experiment("table1", tmp_path)
  thresholds = numbers["thresholds"]
  assert set(thresholds) == {"loose", "tight"}
  assert all(_finite(v) for v in thresholds.values())
  assert thresholds["loose"] >= thresholds["tight"]
  assert _finite(numbers["mean_image_mse"])
  rows = numbers["encoders"]
  assert "decoder_vae" in rows
  assert 1 <= len(_check_stops(tmp_path, numbers)) <= 2
  for row in rows.values():
    assert _finite(row["gme"]) and _finite(row["final_val_recon_mse"])
    assert set(row["steps_to_threshold"]) == {"loose", "tight"}
    for step in row["steps_to_threshold"].values():
      assert step is None or (isinstance(step, int) and step >= 1)
    # The tight threshold is 1.1 x the worst final MSE: every decoder reaches it.
    assert row["steps_to_threshold"]["tight"] is not None
  report = (tmp_path / "report.md").read_text()
  assert "Paper, MNIST" in report and "table1.png" in report


def test_fig4_smoke(tmp_path):
  numbers = _run_experiment("fig4", tmp_path)
  gme = numbers["gme"]
  assert 1 <= len(gme) <= 3 and all(_finite(g) for g in gme)
  assert all(_finite(v) for v in numbers["final_val_recon_mse"])
  assert len(numbers["encoders"]) == len(gme)
  _check_stops(tmp_path, numbers)
  for row in numbers["encoders"].values():
    assert set(row["val_recon_mse_at_fraction"]) == {"0.1", "0.5", "1"}
    assert all(_finite(v) for v in row["val_recon_mse_at_fraction"].values())
    assert all(_finite(v) for v in row["train_recon_mse_at_fraction"].values())
  # Rerunning reuses every finished variant and reproduces the numbers.
  again = _run_experiment("fig4", tmp_path)
  assert again["gme"] == gme
  assert again["final_val_recon_mse"] == numbers["final_val_recon_mse"]


def test_pick_stops_log_levels():
  steps = np.array([10, 20, 30, 40, 50])
  gme = np.array([1.0, 0.3, 0.1, 0.05, 0.01])
  stops = encoders.pick_stops(steps, gme, (0.0, 0.5, 1.0))
  assert [s["step"] for s in stops] == [10, 30, 50]   # levels 1, 0.1, 0.01
  # Coinciding levels (a flat or very short curve) are merged, never duplicated.
  flat = encoders.pick_stops(np.array([4]), np.array([2.0]), (0.0, 0.5, 1.0))
  assert [s["step"] for s in flat] == [4]
  # A curve that gets worse still yields valid, distinct stops.
  worse = encoders.pick_stops(np.array([1, 2]), np.array([1.0, 2.0]), (0.0, 0.5, 1.0))
  assert [s["step"] for s in worse] == [1, 2]


def test_table1_beta_sweep_smoke(tmp_path):
  """Table 1 against the VAE's KL weight: one VAE per beta (its variant's config says which),
  one decoder per frozen encoder, thresholds from the GPE decoder."""
  numbers = _run_experiment("table1_beta", tmp_path)
  betas = numbers["betas"]
  assert betas == [1.0, 30.0]   # the smoke sweep (configs/base.py)
  rows = numbers["encoders"]
  gpe = [r for r in rows.values() if r["method"] == "gpe"]
  assert len(gpe) == 1 and gpe[0]["beta"] is None
  for beta in betas:
    name = f"vae_beta{beta:g}"
    with open(tmp_path / name / "config.json") as f:
      assert json.load(f)["vae"]["beta"] == beta
    row = rows[f"decoder_{name}"]
    assert row["beta"] == beta and _finite(row["gme"]) and _finite(row["vae_own_val_recon_mse"])
    assert 0.0 <= row["weak_bilip_frac_a1.5"] <= 1.0
    assert row["ratio_q05"] <= row["ratio_q50"] <= row["ratio_q95"]
  # a stronger KL moves the codes: the two VAEs' encoders differ
  assert rows["decoder_vae_beta1"]["gme"] != rows["decoder_vae_beta30"]["gme"]
  t = numbers["thresholds"]
  assert t["tight"] == pytest.approx(1.1 * gpe[0]["decoder_final_val_recon_mse"])
  assert t["loose"] >= t["tight"]
  assert gpe[0]["decoder_steps_to_threshold"]["tight"] is not None
  slower = [r["beta"] for r in rows.values() if r["method"] == "vae" and (
      r["decoder_steps_to_threshold"]["tight"] is None or
      r["decoder_steps_to_threshold"]["tight"] > gpe[0]["decoder_steps_to_threshold"]["tight"])]
  assert numbers["vae_slower_than_gpe_to_tight"] == slower
  for fname in ("geometry_vs_beta.png", "latents.png"):
    assert os.path.getsize(tmp_path / fname) > 0


def test_table1_beta_rejects_bad_betas():
  from configs import default
  from gpe_jax.errors import ConfigError
  from gpe_jax.experiments import table1_beta
  config = default.get_config("smoke")
  for bad in ((), (0.0, 1.0), (1.0, 1.0)):
    config.experiments.vae_betas = bad
    with pytest.raises(ConfigError, match="vae_betas"):
      table1_beta.betas_of(config)
