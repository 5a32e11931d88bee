"""End to end through the CLI: outputs, resume, exact resume after a kill, and clear errors."""
import json
import os
import signal

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import FASHION_DIR, HAVE_FASHION, cli_env, run_cli

SMOKE = "--config=configs/default.py:smoke"


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def final_params(workdir, stage):
  ckpt = os.path.join(workdir, stage, "checkpoints")
  with ocp.CheckpointManager(ckpt) as mngr:
    step = mngr.latest_step()
    restored = mngr.restore(step, args=ocp.args.StandardRestore())
  return step, restored


def assert_trees_equal(a, b):
  import jax
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and len(la) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_kill_resumes_exactly(tmp_path, args, stage, steps=6, kill_at=2):
  """Train ``stage`` uninterrupted; train it again, SIGKILLed right after the checkpoint of
  step ``kill_at``, then resumed: the final train states must be bitwise equal."""
  ref = str(tmp_path / "ref")
  assert run_cli(*args, f"--workdir={ref}").returncode == 0
  wd = str(tmp_path / "killed")
  env = cli_env()
  env["GPE_JAX_KILL_AT_STEP"] = str(kill_at)
  res = run_cli(*args, f"--workdir={wd}", env=env)
  assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
  res = run_cli(*args, f"--workdir={wd}")
  assert res.returncode == 0 and f"resumed from step {kill_at}" in res.stderr, res.stderr[-2000:]
  step_ref, state_ref = final_params(ref, stage)
  step_got, state_got = final_params(wd, stage)
  assert step_ref == step_got == steps
  assert_trees_equal(state_ref, state_got)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("smoke"))
  res = run_cli(SMOKE, f"--workdir={wd}")
  assert res.returncode == 0, res.stderr[-3000:]
  return wd, res


def test_smoke_end_to_end_writes_every_output(smoke_run):
  wd, res = smoke_run
  for f in ["config.json", "metrics.jsonl", "summary.json", "loss_curves.png",
            "encoder/latent_stats.npz", "encoder/latent_scatter.png", "encoder/distortion.png",
            "decoder/reconstructions.png", "encoder/done.json", "decoder/done.json",
            "prior/done.json", "sample/samples.npz", "sample/samples.png",
            "sample/interpolation_latent.png", "sample/interpolation_prior.png",
            "evaluate/metrics.json", "evaluate/prior_vs_noprior.png"]:
    assert os.path.getsize(os.path.join(wd, f)) > 0, f
  for stage in ("encoder", "decoder", "prior"):
    assert os.listdir(os.path.join(wd, stage, "checkpoints"))
  assert any(f.startswith("events") for f in os.listdir(os.path.join(wd, "tensorboard")))
  cfg = json.load(open(os.path.join(wd, "config.json")))
  assert cfg["data"]["name"] == "digits"
  assert cfg["stages"] == ["encoder", "decoder", "prior", "sample", "evaluate"]
  rows = read_jsonl(os.path.join(wd, "metrics.jsonl"))
  assert {r["stage"] for r in rows} == {"encoder", "decoder", "prior"}
  assert all("step" in r for r in rows)
  assert any("loss" in r for r in rows if r["stage"] == "encoder")
  assert any("val_gme" in r for r in rows)
  assert any("val_recon_mse" in r for r in rows)
  summary = json.load(open(os.path.join(wd, "summary.json")))
  enc, dec = summary["encoder"], summary["decoder"]
  assert enc["steps"] == 4 and dec["steps"] == 4
  assert enc["seconds"] > 0 and dec["seconds"] > 0
  for key in ["val_gme", "heldout_gme", "weak_bilip_frac_a1.5", "weak_bilip_bound_a1.5",
              "knn_preservation_k10", "ratio_q50"]:
    assert np.isfinite(enc[key]), key
  assert np.isfinite(dec["val_recon_mse"]) and np.isfinite(dec["val_mean_image_mse"])
  stats = np.load(os.path.join(wd, "encoder/latent_stats.npz"))
  assert stats["mean"].shape == (10,) and float(stats["scale"]) > 0
  assert np.isfinite(summary["prior"]["val_fm_loss"]) and summary["prior"]["ema"]
  samples = np.load(os.path.join(wd, "sample/samples.npz"))
  assert samples["x"].shape == (64, 8, 8, 1) and samples["z"].shape == (64, 10)
  assert float(samples["nfe"]) == 8  # smoke: 4 Heun steps
  assert np.all(np.isfinite(samples["x"]))
  solvers = summary["sample"]["solvers"]
  assert solvers["rk4"]["nfe"] == 16 and solvers["dopri5"]["nfe"] > 0
  ev = summary["evaluate"]
  for ext in ("classifier", "pixels"):
    for s in ("prior", "noprior", "recon", "floor"):
      assert np.isfinite(ev[f"fd_{ext}_{s}"]) and ev[f"fd_{ext}_{s}"] >= 0
      assert 0 <= ev[f"precision_{ext}_{s}"] <= 1 and 0 <= ev[f"recall_{ext}_{s}"] <= 1
  proto = ev["protocol"]
  assert proto["n_samples"] == 64 and proto["n_reference"] == 64
  assert "held-out" in proto["reference"]
  assert 0 <= proto["extractors"]["classifier"]["test_accuracy"] <= 1
  # the public API reproduces the stage's samples from the workdir (config.sample's solver)
  import gpe_jax
  model = gpe_jax.load(wd)
  x, z = model.sample(8, seed=0, return_latents=True)
  assert model.method == "gpe" and x.shape == (8, 8, 8, 1)
  np.testing.assert_allclose(z, samples["z"][:8], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(model.decode(z), samples["x"][:8], rtol=1e-5, atol=1e-5)
  records = json.load(open(os.path.join(wd, "evaluate/metrics.json")))["records"]
  assert records["fd_classifier_prior"]["n"] == 64
  assert records["fd_classifier_prior"]["extractor"] == "classifier"


def test_rerun_skips_finished_stages_and_extends_num_steps(smoke_run, tmp_path):
  src, _ = smoke_run
  wd = str(tmp_path / "wd")
  import shutil
  shutil.copytree(src, wd)
  before = json.load(open(os.path.join(wd, "summary.json")))
  res = run_cli(SMOKE, f"--workdir={wd}")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "already finished" in res.stderr
  assert json.load(open(os.path.join(wd, "summary.json"))) == before
  # raising num_steps continues the stage from its checkpoint (no restart)
  res = run_cli(SMOKE, f"--workdir={wd}", "--config.encoder.num_steps=6",
                "--config.stages=('encoder',)")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "resumed from step 4" in res.stderr
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["encoder"]["steps"] == 6
  steps = [r["step"] for r in read_jsonl(os.path.join(wd, "metrics.jsonl"))
           if r["stage"] == "encoder" and "loss" in r]
  assert steps == sorted(steps) and steps[-1] == 6


def test_killed_run_resumes_to_identical_parameters(tmp_path):
  args = [SMOKE, "--config.encoder.num_steps=8", "--config.decoder.num_steps=8",
          "--config.prior.num_steps=8"]
  ref = str(tmp_path / "uninterrupted")
  res = run_cli(*args, f"--workdir={ref}")
  assert res.returncode == 0, res.stderr[-3000:]

  wd = str(tmp_path / "killed")
  env = cli_env()
  env["GPE_JAX_KILL_AT_STEP"] = "2"  # SIGKILL right after the first checkpoint (step 2)
  res = run_cli(*args, f"--workdir={wd}", env=env)
  assert res.returncode == -signal.SIGKILL, (res.returncode, res.stderr[-2000:])
  assert not os.path.exists(os.path.join(wd, "encoder", "done.json"))
  assert final_params(wd, "encoder")[0] == 2
  env["GPE_JAX_KILL_AT_STEP"] = "6"  # the encoder passes step 6 -> killed there this time
  res = run_cli(*args, f"--workdir={wd}", env=env)
  assert res.returncode == -signal.SIGKILL
  assert final_params(wd, "encoder")[0] == 6
  res = run_cli(*args, f"--workdir={wd}")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "resumed from step 6" in res.stderr
  # now kill the prior stage alone (encoder and decoder are done) and resume it
  import shutil
  shutil.rmtree(os.path.join(wd, "prior"))
  env["GPE_JAX_KILL_AT_STEP"] = "4"
  res = run_cli(*args, f"--workdir={wd}", env=env)
  assert res.returncode == -signal.SIGKILL, (res.returncode, res.stderr[-2000:])
  assert final_params(wd, "prior")[0] == 4
  res = run_cli(*args, f"--workdir={wd}")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "prior: resumed from step 4" in res.stderr
  for stage in ("encoder", "decoder", "prior"):
    step_ref, state_ref = final_params(ref, stage)
    step_got, state_got = final_params(wd, stage)
    assert step_ref == step_got == 8
    assert_trees_equal(state_ref, state_got)
  assert final_params(ref, "prior")[1]["ema_params"]  # the EMA is part of the checkpoint
  # the resumed prior samples exactly what the uninterrupted one does
  np.testing.assert_array_equal(np.load(os.path.join(ref, "sample/samples.npz"))["x"],
                                np.load(os.path.join(wd, "sample/samples.npz"))["x"])
  # metrics.jsonl holds each logged step once, even though steps ran twice
  rows = [(r["stage"], r["step"]) for r in read_jsonl(os.path.join(wd, "metrics.jsonl"))
          if "loss" in r]
  assert len(rows) == len(set(rows))


def _error_run(tmp_path, *args):
  res = run_cli(*args, f"--workdir={tmp_path / 'wd'}", timeout=120)
  assert res.returncode != 0
  return res.stderr


def test_missing_inception_weights_fail_before_training(tmp_path):
  err = _error_run(tmp_path, SMOKE, "--config.evaluate.extractors=('pixels','inception')")
  assert "inception_weights" in err and "convert_inception_weights" in err
  assert "Traceback" not in err
  assert not os.path.exists(tmp_path / "wd" / "encoder")  # nothing was trained
  err = _error_run(tmp_path, SMOKE, "--config.prior.evals=('fm_loss','fd_bogus')")
  assert "fd_bogus" in err and "fd_classifier" in err


def test_unknown_dataset_is_a_clear_error(tmp_path):
  err = _error_run(tmp_path, SMOKE, "--config.data.name=imagenet7")
  assert "imagenet7" in err and "digits" in err and "fashion_mnist" in err
  assert "Traceback" not in err


def test_missing_data_files_is_a_clear_error(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  err = _error_run(tmp_path, "--config=configs/mnist.py:smoke", f"--config.data.path={empty}")
  assert str(empty) in err and "mnist" in err and "Traceback" not in err


def test_missing_tfds_data_fails_fast(tmp_path):
  empty = tmp_path / "tfds"
  empty.mkdir()
  err = _error_run(tmp_path, "--config=configs/cifar10.py:smoke",
                   f"--config.data.tfds_data_dir={empty}")
  assert "cifar10" in err and str(empty) in err


def test_mistyped_config_key_is_a_clear_error(tmp_path):
  err = _error_run(tmp_path, SMOKE, "--config.data.bacth_size=8")
  assert "bacth_size" in err


def test_unknown_stage_is_a_clear_error(tmp_path):
  err = _error_run(tmp_path, SMOKE, "--config.stages=('encoder','decodr')")
  assert "decodr" in err and "Known stages" in err


def test_corrupt_checkpoint_is_an_error_not_a_restart(smoke_run, tmp_path):
  src, _ = smoke_run
  wd = str(tmp_path / "wd")
  import shutil
  shutil.copytree(src, wd)
  os.remove(os.path.join(wd, "encoder", "done.json"))
  # a different latent size cannot be restored from these checkpoints
  res = run_cli(SMOKE, f"--workdir={wd}", "--config.model.latent_dim=7")
  assert res.returncode == 2
  err = res.stderr
  assert "another config" in err and "model.latent_dim: 10 -> 7" in err
  assert "Traceback" not in err


@pytest.mark.skipif(not HAVE_FASHION, reason=f"Debian package dataset-fashion-mnist not "
                    f"installed ({FASHION_DIR} missing)")
def test_fashion_mnist_smoke_through_cli(tmp_path):
  wd = str(tmp_path / "fm")
  res = run_cli("--config=configs/fashion_mnist.py:smoke", f"--workdir={wd}")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "fashion-mnist" in res.stderr
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["decoder"]["steps"] == 4 and np.isfinite(summary["encoder"]["val_gme"])


def test_mixture_smoke_through_cli(tmp_path):
  wd = str(tmp_path / "mix")
  res = run_cli("--config=configs/mixture.py:smoke", f"--workdir={wd}")
  assert res.returncode == 0, res.stderr[-3000:]
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["encoder"]["num_points"] == 64
  assert os.path.getsize(os.path.join(wd, "encoder", "latent_scatter.png")) > 0
