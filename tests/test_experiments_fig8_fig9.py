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


def test_fig8_protocol_smoke(tmp_path):
  """The lr grid on seed 0 (5 methods x 2 lrs, each its own variant), the chosen lr per
  method, and the seed-0 comparison made from the grid's own runs."""
  from configs import default
  from gpe_jax.experiments import common, fig8_protocol
  config = default.get_config("smoke")
  config.num_devices = 1
  config.experiments.lrs = (1e-3, 3e-3)
  config.experiments.seeds = (0,)
  report = common.write_report(str(tmp_path), fig8_protocol.run(config, str(tmp_path)),
                               "fig8_protocol smoke", 0.0)
  with open(tmp_path / "numbers.json") as f:
    numbers = json.load(f)
  methods = ("gpe", "vae", "ae", "vae_mds", "ae_mds")
  lrs = ("0.001", "0.003")
  for m in methods:
    finals = {float(lr): numbers["grid"][m][lr]["final_mse"] for lr in lrs}
    assert all(finite(v) for v in finals.values()), (m, finals)
    chosen = numbers["chosen_lrs"][m]
    assert chosen in (1e-3, 3e-3) and finals[chosen] == min(finals.values())
    run = numbers["per_seed"]["0"]["methods"][m]
    assert run["lr"] == chosen and run["final_mse"] == finals[chosen]
    assert finite(run["to_threshold"]["loose"]["seconds"])
  seed0 = numbers["per_seed"]["0"]
  loose, tight = seed0["thresholds"]["loose"], seed0["thresholds"]["tight"]
  assert finite(loose) and finite(tight) and tight <= loose
  assert seed0["ranks"]["loose"]["gpe"] == numbers["aggregate"]["gpe_rank_loose"]["0"] >= 1
  stop = seed0["gpe_encoder_stop"]
  assert stop["gme_stop"] == 0.004 and stop["steps"] >= 1 and isinstance(stop["reached"], bool)
  # Each (seed, lr) folder holds the five methods once; nothing else was trained.
  runs = sorted(d for d in os.listdir(tmp_path) if d.startswith("seed"))
  assert runs == ["seed0_lr0.001", "seed0_lr0.003"]
  for d in runs:
    assert sorted(os.listdir(tmp_path / d)) == sorted(methods)
  with open(tmp_path / "seed0_lr0.003" / "gpe" / "config.json") as f:
    cfg = json.load(f)
  assert cfg["encoder"]["lr"] == cfg["decoder"]["lr"] == 0.003
  assert cfg["encoder"]["target_loss"] == 0.004 and cfg["seed"] == 0
  with open(tmp_path / "seed0_lr0.001" / "vae" / "config.json") as f:
    assert json.load(f)["vae"]["lr"] == 0.001
  assert os.path.getsize(tmp_path / "fig8_protocol.png") > 0
  with open(report) as f:
    text = f.read()
  assert "fig8_protocol.png" in text and "under the paper's protocol" in text


def test_fig8_protocol_selection_and_aggregate():
  """The lr rule (smallest finite final MSE, ties to the larger lr) and the per-seed
  comparison aggregated over seeds, on hand-made curves."""
  import numpy as np
  from gpe_jax.experiments import fig8, fig8_protocol
  nan = float("nan")
  assert fig8_protocol.select_lr({3e-4: 0.3, 1e-3: 0.2, 3e-3: nan}) == 1e-3
  assert fig8_protocol.select_lr({3e-4: 0.3, 1e-3: 0.2, 3e-3: 0.2}) == 3e-3   # tie: larger
  assert fig8_protocol.select_lr({1e-3: float("inf"), 3e-4: 1.0}) == 3e-4
  assert fig8_protocol.select_lr({1e-3: nan, 3e-3: None}) is None

  def method(final, dt):
    c = {"steps": np.array([1, 2, 3]), "mse": np.array([1.0, 0.5, final]),
         "seconds": dt * np.array([1.0, 2.0, 3.0]),
         "train_seconds": dt * np.array([1.0, 2.0, 3.0])}
    return {"final_mse": final}, c

  finals = {"gpe": 0.10, "vae": 0.30, "ae": 0.12, "vae_mds": 0.20, "ae_mds": 0.15}
  fast = dict(gpe=1, vae=2, ae=3, vae_mds=4, ae_mds=5)
  seed0 = fig8.compare({m: method(finals[m], fast[m]) for m in finals})
  # Seed 1: the VAE unstable (takes no part), the AE ties GPE's final MSE and is faster.
  finals1 = dict(finals, vae=nan, ae=0.10)
  fast1 = dict(gpe=3, vae=1, ae=1, vae_mds=2, ae_mds=4)
  seed1 = fig8.compare({m: method(finals1[m], fast1[m]) for m in finals})
  assert seed0["thresholds"]["loose"] == 1.1 * 0.30 and seed0["thresholds"]["tight"] == 1.1 * 0.10
  assert seed1["thresholds"]["loose"] == 1.1 * 0.20 and "vae" not in seed1["to_threshold"]
  assert seed0["order"]["loose"] == ["gpe", "vae", "ae", "vae_mds", "ae_mds"]
  assert seed1["order"]["loose"] == ["ae", "vae_mds", "gpe", "ae_mds"]
  assert seed1["order"]["tight"] == ["ae", "gpe"] and seed0["order"]["tight"] == ["gpe"]
  agg = fig8_protocol.aggregate({0: seed0, 1: seed1, 2: seed0})
  assert agg["gpe_rank_loose"] == {0: 1, 1: 3, 2: 1}
  g = agg["methods"]["gpe"]
  assert g["loose_seconds_per_seed"] == [3.0, 9.0, 3.0]
  assert g["loose_seconds"]["median"] == 3.0 and g["loose_seconds"]["mean"] == 5.0
  assert (g["loose_seconds"]["min"], g["loose_seconds"]["max"]) == (3.0, 9.0)
  assert g["loose_first"] == 2 and g["tight_first"] == 2 and g["tight_reached"] == 3
  assert g["loose_ranks"] == [1, 3, 1] and g["tight_ranks"] == [1, 2, 1]
  v = agg["methods"]["vae"]
  assert v["loose_ranks"] == [2, None, 2] and v["loose_reached"] == 2 and v["loose_first"] == 0
  assert v["loose_seconds"]["median"] == 6.0 and v["tight_seconds"]["median"] is None
  a = agg["methods"]["ae"]
  assert a["loose_first"] == 1 and a["tight_first"] == 1 and a["tight_reached"] == 1
