"""Smoke runs of the Fig. 3 and Table 2 experiments through their command lines."""
import json
import math
import os
import subprocess
import sys

from conftest import REPO, cli_env

GEOMETRY_KEYS = ("gme_all_pairs", "weak_bilip_frac_a1.1", "weak_bilip_frac_a1.5",
                 "weak_bilip_frac_a2", "weak_bilip_bound_a1.5", "knn_preservation_k10",
                 "spearman_dist", "ratio_q50")
STEP_NAMES = ("gpe_encoder", "gpe_decoder", "vae", "ae", "vae_mds", "ae_mds", "prior")


def _run_experiment(name, config, workdir, timeout=240):
  proc = subprocess.run(
      [sys.executable, "-m", f"gpe_jax.experiments.{name}", f"--config={config}",
       f"--workdir={workdir}"], cwd=REPO, env=cli_env(), capture_output=True, text=True,
      timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(workdir, "numbers.json")) as f:
    numbers = json.load(f)
  report = open(os.path.join(workdir, "report.md")).read()
  return numbers, report


def _finite(v):
  return isinstance(v, (int, float)) and math.isfinite(v)


def test_fig3_smoke(tmp_path):
  workdir = str(tmp_path / "fig3")
  numbers, report = _run_experiment("fig3", "configs/mixture.py:smoke", workdir)
  assert os.path.getsize(os.path.join(workdir, "fig3.png")) > 0
  assert "fig3.png" in report and "gme_all_pairs" in report
  for variant in ("gpe", "vae"):
    for key in GEOMETRY_KEYS:
      assert _finite(numbers[variant][key]), (variant, key, numbers[variant].get(key))
    # The restored encoder is the one the stage measured.
    assert math.isclose(numbers[variant]["gme_all_pairs_restored"], numbers[variant]["gme_all_pairs"],
                        rel_tol=1e-3)
    assert numbers[variant]["steps"] == 4
    assert os.path.exists(os.path.join(workdir, variant, "summary.json"))
  assert not os.path.exists(os.path.join(workdir, "gpe", "decoder"))  # encoder stage only


def test_table2_smoke(tmp_path):
  workdir = str(tmp_path / "table2")
  numbers, report = _run_experiment("table2", "configs/default.py:smoke", workdir)
  assert os.path.getsize(os.path.join(workdir, "table2.png")) > 0
  assert "table2.png" in report and "V100" in report
  secs = numbers["seconds_per_iteration"]
  assert set(secs) == set(STEP_NAMES)
  for name in STEP_NAMES:
    assert _finite(secs[name]) and secs[name] > 0, (name, secs[name])
  assert math.isclose(numbers["gpe_encoder_plus_decoder"],
                      secs["gpe_encoder"] + secs["gpe_decoder"])
  assert numbers["timed_iters"] == 3
  assert numbers["paper_v100_mnist"]["seconds_per_iteration"]["vae"] == 0.024
  assert not [d for d in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, d))]
