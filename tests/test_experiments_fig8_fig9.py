"""Experiments fig8 (wall clock to a reconstruction threshold) and fig9 (FD vs prior
iterations): smoke runs through the command line, and the clock arithmetic of fig8."""
import json
import math
import os
import subprocess
import sys

from conftest import REPO, cli_env

SMOKE = "--config=configs/default.py:smoke"


def run_experiment(name, workdir, timeout=240):
  res = subprocess.run([sys.executable, "-m", f"gpe_jax.experiments.{name}", SMOKE,
                        f"--workdir={workdir}"], cwd=REPO, env=cli_env(), capture_output=True,
                       text=True, timeout=timeout)
  assert res.returncode == 0, res.stderr[-4000:]
  for fname in ("report.md", "numbers.json", f"{name}.png"):
    path = os.path.join(workdir, fname)
    assert os.path.isfile(path) and os.path.getsize(path) > 0, fname
  with open(os.path.join(workdir, "numbers.json")) as f:
    return json.load(f)


def finite(v):
  return isinstance(v, (int, float)) and math.isfinite(v)


def test_fig8_smoke(tmp_path):
  numbers = run_experiment("fig8", str(tmp_path))
  methods = ("gpe", "vae", "ae", "vae_mds", "ae_mds")
  assert set(numbers["methods"]) == set(methods)
  loose, tight = numbers["thresholds"]["loose"], numbers["thresholds"]["tight"]
  assert finite(loose) and finite(tight) and tight <= loose
  finals = []
  for m in methods:
    r = numbers["methods"][m]
    for key in ("final_mse", "total_seconds", "gme_all_pairs", "train_only_seconds"):
      assert finite(r[key]), (m, key, r[key])
    finals.append(r["final_mse"])
    # The loose threshold is reached by every method by construction.
    hit = r["to_threshold"]["loose"]
    assert finite(hit["seconds"]) and finite(hit["train_seconds"]) and hit["steps"] >= 1
    c = r["curve"]
    assert len(c["steps"]) == len(c["val_recon_mse"]) == len(c["seconds"]) >= 2
    assert all(finite(v) for v in c["val_recon_mse"] + c["seconds"] + c["train_seconds"])
    assert all(b >= a for a, b in zip(c["seconds"], c["seconds"][1:]))
  assert math.isclose(loose, 1.1 * max(finals)) and math.isclose(tight, 1.1 * min(finals))
  # Only the best method is guaranteed the tight threshold.
  assert any(finite(numbers["methods"][m]["to_threshold"]["tight"]["seconds"])
             for m in methods)
  gpe = numbers["methods"]["gpe"]
  assert gpe["curve"]["seconds"][0] > gpe["encoder_seconds"] > 0   # shifted by the encoder
  assert gpe["to_threshold"]["loose"]["seconds"] > gpe["encoder_seconds"]
  with open(tmp_path / "report.md") as f:
    report = f.read()
  assert "fig8.png" in report and "AE+MDS" in report


def test_fig9_smoke(tmp_path):
  numbers = run_experiment("fig9", str(tmp_path))
  assert numbers["prior_eval_every"] >= 1
  assert finite(numbers["classifier"]["test_accuracy"])
  assert numbers["num_reference"] >= 1 and numbers["eval_samples"] >= 1
  assert finite(numbers["data_floor"]["fd_classifier"])
  for m in ("gpe", "vae"):
    c = numbers["curves"][m]
    assert len(c["steps"]) == len(c["fd_classifier"]) >= 1
    assert all(finite(v) and v >= 0 for v in c["fd_classifier"])
    f = numbers["finals"][m]
    for key in ("fd_classifier", "best_fd_classifier", "val_fm_loss", "prior_seconds"):
      assert finite(f[key]), (m, key)
    assert f["fd_classifier"] == c["fd_classifier"][-1]
  # Same prior config for both: the same evaluation steps.
  assert numbers["curves"]["gpe"]["steps"] == numbers["curves"]["vae"]["steps"]


def test_fig8_training_only_clock(tmp_path):
  """Windows that start at an evaluation are re-timed at the nearest clean window's rate."""
  from gpe_jax.experiments import fig8
  rows = []
  # Logged every 10 steps, evaluated every 20; the first window compiles (slow), windows after
  # an evaluation also contain it (slow), the rest run at 100 steps/s.
  for step in range(10, 61, 10):
    rate = 5.0 if step == 10 else (20.0 if (step - 10) % 20 == 0 else 100.0)
    rows.append({"stage": "ae", "step": step, "loss": 1.0, "steps_per_sec": rate})
    if step % 20 == 0:
      rows.append({"stage": "ae", "step": step, "val_recon_mse": 1.0 / step})
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows) + "\n")
  clocks = fig8.stage_clocks(str(tmp_path), "ae", [20, 40, 60])
  assert list(clocks["steps"]) == [0, 10, 20, 30, 40, 50, 60]
  logged = [0, 2.0, 2.1, 2.6, 2.7, 3.2, 3.3]
  train = [0, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5]
  assert all(math.isclose(a, b) for a, b in zip(clocks["logged"], logged))
  assert all(math.isclose(a, b) for a, b in zip(clocks["train"], train))
  curve = fig8.method_curve(str(tmp_path), "ae", offset_logged=1.0, offset_train=0.5)
  assert list(curve["steps"]) == [20, 40, 60]
  assert all(math.isclose(a, b) for a, b in zip(curve["seconds"], [3.1, 3.7, 4.3]))
  assert fig8.to_threshold(curve, 1.0 / 40)["steps"] == 40
  assert fig8.to_threshold(curve, 1e-9)["steps"] is None
