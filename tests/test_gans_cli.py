"""GAN methods through the command line: every method trains, samples and is evaluated
(``:smoke``), a killed GMEGAN run resumes bit-exactly, and bad hyperparameters are one
paragraph and exit 2 before any training."""
import json
import os

import numpy as np
import pytest

from conftest import run_cli
from gpe_jax.stages import gans
from test_cli import assert_kill_resumes_exactly

MIXTURE = "--config=configs/gmegan_mixture.py:smoke"


@pytest.mark.parametrize("name", gans.NAMES)
def test_gan_method_through_sample_and_evaluate(name, tmp_path):
  wd = str(tmp_path / name)
  res = run_cli(MIXTURE, f"--workdir={wd}", f"--config.method={name}",
                f"--config.stages=('{name}','sample','evaluate')")
  assert res.returncode == 0, res.stderr[-3000:]
  summary = json.load(open(os.path.join(wd, "summary.json")))
  s = summary[name]
  assert s["steps"] == 4 and 0 <= s["modes_covered"] <= 12 and 0 <= s["high_quality"] <= 1
  rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert any("modes_covered" in r and r["step"] == 4 for r in rows if r["stage"] == name)
  assert {f"loss_{n}" for n in gans.nets_of(name, _cfg()[name]) if n != "f"} <= set(
      next(r for r in rows if r["stage"] == name and "loss" in r))
  manifest = json.load(open(os.path.join(wd, name, "manifest.json")))
  assert manifest["decoder"]["input"] == "noise" and manifest["decoder"]["subtree"] == "G"
  assert (manifest["encoder"] is not None) == (name in gans.WITH_ENCODER)
  if name in gans.WITH_ENCODER:
    assert np.isfinite(s["gme_all_pairs"]) and 0 <= s["cm_identity_optimal"] <= 1
  assert summary["sample"]["method"] == "direct" and summary["sample"]["nfe_per_sample"] == 0
  ev = summary["evaluate"]
  assert ev["protocol"]["method"] == name and np.isfinite(ev["fd_pixels_prior"])
  assert "fd_pixels_noprior" not in ev   # a GAN's samples are G(noise): no second set
  assert ("fd_pixels_recon" in ev) == (name in gans.WITH_ENCODER)
  x = np.load(os.path.join(wd, "sample", "samples.npz"))["x"]
  assert x.shape == (64, 100) and np.all(np.isfinite(x))
  assert "prior" not in summary


def _cfg():
  import importlib
  return importlib.import_module("configs.gmegan_mixture").get_config("smoke")


def test_killed_gmegan_resumes_to_identical_parameters(tmp_path):
  assert_kill_resumes_exactly(
      tmp_path, [MIXTURE, "--config.gmegan.num_steps=6", "--config.stages=('gmegan',)"],
      "gmegan")


def test_bad_gan_hyperparameter_is_one_paragraph(tmp_path):
  wd = str(tmp_path / "wd")
  res = run_cli(MIXTURE, f"--workdir={wd}", "--config.gmegan.p=0.5",
                "--config.gmegan.n_critic=0", timeout=120)
  assert res.returncode == 2
  assert "Traceback" not in res.stderr
  assert "n_critic=0" in res.stderr and "p=0.5" in res.stderr
  assert not os.path.exists(os.path.join(wd, "gmegan", "checkpoints"))


def test_gmegan_on_images_reports_class_balance(tmp_path):
  """GMEGAN's conv families on images (the bundled 8x8 digits, labelled), evaluated with the
  classifier: the paper's mode-collapse measure is reported for the samples and the floor."""
  wd = str(tmp_path / "digits")
  res = run_cli("--config=configs/gmegan_digits.py:smoke", f"--workdir={wd}",
                "--config.evaluate.extractors=('classifier','pixels')")
  assert res.returncode == 0, res.stderr[-3000:]
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["gmegan"]["steps"] == 4
  ev = summary["evaluate"]
  # 0 (balanced) ... sqrt(10 - 1) = 3 (every sample one class); real data is near balanced
  assert 0 <= ev["class_rel_std_prior"] <= 3.0 + 1e-9 and np.isfinite(ev["fd_classifier_prior"])
  assert ev["class_rel_std_floor"] < 1.0
  x = np.load(os.path.join(wd, "sample", "samples.npz"))["x"]
  assert x.shape[1:] == (8, 8, 1) and np.all(np.isfinite(x))
