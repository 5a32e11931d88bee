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
