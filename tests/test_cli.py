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
  import time
  wd = str(tmp_path_factory.mktemp("smoke"))
  t0 = time.perf_counter()
  res = run_cli(SMOKE, f"--workdir={wd}")
  res.wall_s = time.perf_counter() - t0
  assert res.returncode == 0, res.stderr[-3000:]
  return wd, res


def test_default_smoke_takes_seconds(smoke_run):
  """The default :smoke (every stage, 4 steps each) measured 24 s from an empty compilation
  cache on a quiet 2-core machine (fast_compile on), 20 s here with the tests' cache warm and
  50 s with it off while the other test worker shared the two cores; the bound allows for
  that. A smoke run that takes minutes (as a 3,072-D pixel FD once did) fails."""
  _, res = smoke_run
  assert res.wall_s <= 90, f"default smoke took {res.wall_s:.1f} s"


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
  for key in ["val_gme", "gme_all_pairs", "weak_bilip_frac_a1.5", "weak_bilip_bound_a1.5",
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


def _readme_key_patterns():
  """The keys of README's "What the numbers mean" table as regular expressions
  (``<alpha>``-style placeholders match any text)."""
  import re
  from conftest import REPO
  text = open(os.path.join(REPO, "README.md")).read()
  section = text.split("### What the numbers mean", 1)[1].split("\n#", 1)[0]
  patterns = []
  for line in section.splitlines():
    if not line.startswith("| `"):
      continue
    for key in re.findall(r"`([^`]+)`", line.split("|")[1]):
      patterns.append(re.compile(re.sub(r"<[^>]+>", ".+", re.escape(key).replace(r"\<", "<")
                                        .replace(r"\>", ">")) + "$"))
  return patterns


def test_readme_documents_every_key_the_default_job_writes(smoke_run):
  wd, _ = smoke_run
  patterns = _readme_key_patterns()
  assert len(patterns) > 20
  keys = set()
  for r in read_jsonl(os.path.join(wd, "metrics.jsonl")):
    keys |= set(r)
  for values in json.load(open(os.path.join(wd, "summary.json"))).values():
    keys |= set(values)
  missing = sorted(k for k in keys if not any(p.match(k) for p in patterns))
  assert not missing, f"README 'What the numbers mean' lacks {missing}"


def test_own_image_folder_runs_every_stage_in_one_command(tmp_path):
  """300 unlabelled images of two sizes in a folder: configs/folder.py runs every stage with
  only the path given (hold-out sized to the data, label-free evaluation)."""
  from PIL import Image
  images = tmp_path / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(300):
    h, w = (24, 32) if i % 3 else (40, 40)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        images / f"{i:03d}.png")
  wd = str(tmp_path / "wd")
  res = run_cli("--config=configs/folder.py:smoke", f"--config.data.path={images}",
                f"--workdir={wd}")
  assert res.returncode == 0, res.stderr[-3000:]
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert set(summary) == {"encoder", "decoder", "prior", "sample", "evaluate"}
  assert summary["encoder"]["num_points"] == 32       # 10% of 300 raised to one batch of 32
  assert np.isfinite(summary["evaluate"]["fd_pixels_prior"])
  assert not any(k.startswith("fd_classifier") for k in summary["evaluate"])
  assert np.load(os.path.join(wd, "sample/samples.npz"))["x"].shape[1:] == (32, 32, 3)


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


# --------------------------------------------------------------------------- --config_help


def _config_modules():
  """Every config file of configs/ (configs.NAME), base.py and __init__.py left out."""
  import glob
  import importlib
  from conftest import REPO
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py")))
  return {n: importlib.import_module(f"configs.{n}") for n in names
          if n not in ("__init__", "base")}


def test_every_config_field_has_a_meaning():
  """A field added to configs/base.py (or to any config file) without a line in
  gpe_jax.config_help.HELP fails here; so does a HELP line whose field no config has."""
  from configs import base
  from gpe_jax import config_help
  configs = {"configs/base.py": base.get_config()}
  for name, module in _config_modules().items():
    configs[f"configs/{name}.py"] = module.get_config()
    configs[f"configs/{name}.py:smoke"] = module.get_config("smoke")
  fields = set()
  for where, config in configs.items():
    assert config_help.missing(config) == [], (
        f"{where}: fields without a meaning in gpe_jax/config_help.py HELP")
    fields.update(name for name, _ in config_help.flatten(config))
  assert sorted(set(config_help.HELP) - fields) == [], "HELP describes fields no config has"
  assert all(line and "\n" not in line for line in config_help.HELP.values())


def test_readme_config_table_is_the_generated_one():
  from conftest import REPO
  from configs import base
  from gpe_jax import config_help
  text = open(os.path.join(REPO, "README.md")).read()
  block = text.split("<!-- config-table:start -->\n", 1)[1].split("\n<!-- config-table:end -->", 1)[0]
  assert block.strip() == config_help.markdown_table(base.get_config()).strip(), (
      "README's config table is stale: regenerate it with python -m gpe_jax.config_help "
      "--markdown")


def test_config_help_command(capsys):
  from gpe_jax import config_help
  config_help.main(["--markdown"])
  assert capsys.readouterr().out.startswith("| field | default | meaning |")
  config_help.main(["--config=configs/default.py:smoke"])
  assert any(l.startswith("encoder.num_steps ") and " 4 " in l
             for l in capsys.readouterr().out.splitlines())
  for bad in (["--bogus"], ["--config=configs/no_such.py"]):
    with pytest.raises(SystemExit) as e:
      config_help.main(bad)
    assert e.value.code == 2 and "Usage: python -m gpe_jax.config_help" in capsys.readouterr().err


def test_config_help_table_and_listing():
  from configs import base
  from gpe_jax import config_help
  config = base.get_config()
  table = config_help.markdown_table(config).splitlines()
  assert table[0] == "| field | default | meaning |"
  assert len(table) == 2 + len(list(config_help.flatten(config)))
  row = next(r for r in table if r.startswith("| `encoder.lr` |"))
  assert "`0.0001`" in row and config_help.HELP["encoder.lr"] in row
  assert any("euler \\| heun" in r for r in table)   # a '|' in a meaning is escaped
  text = config_help.text(config, "configs/base.py")
  assert "data.mixture.dim" in text and "(no description)" not in text


def test_config_help_flag_prints_fields_and_runs_nothing(tmp_path):
  wd = tmp_path / "wd"
  res = run_cli(SMOKE, "--config.encoder.lr=0.25", "--config_help", f"--workdir={wd}",
                timeout=120)
  assert res.returncode == 0, res.stderr[-3000:]
  line = next(l for l in res.stdout.splitlines() if l.startswith("encoder.lr "))
  assert "0.25" in line and "learning rate" in line
  assert any(l.startswith("data.mixture.dim ") for l in res.stdout.splitlines())
  assert not wd.exists()
  # the experiments share the command line: --config_help needs no --workdir there either
  import subprocess
  import sys
  from conftest import REPO
  res = subprocess.run([sys.executable, "-m", "gpe_jax.experiments.table1", SMOKE,
                        "--config_help"], cwd=REPO, env=cli_env(), capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-3000:]
  assert any(l.startswith("encoder.num_steps ") and " 4 " in l for l in res.stdout.splitlines())


# --------------------------------------------------------------------------- the summary


def test_summary_is_in_pipeline_order_with_meanings_and_plots(tmp_path):
  from gpe_jax import main
  wd = tmp_path / "wd"
  for f in ("loss_curves.png", "encoder/latent_scatter.png", "evaluate/prior_vs_noprior.png",
            "stale/encoder-old/latent_scatter.png", "summary.json"):
    (wd / f).parent.mkdir(parents=True, exist_ok=True)
    (wd / f).write_bytes(b"x")
  summary = {"evaluate": {"fd_pixels_prior": 3.5, "protocol": {}},
             "decoder": {"steps": 4, "seconds": 1.5, "val_recon_mse": 0.25},
             "encoder": {"steps": 4, "seconds": 2.0, "val_gme": 0.5},
             "toy": {"steps": 1}}
  lines = main.summary_lines(summary, str(wd))
  heads = [l.split(":")[0] for l in lines if not l.startswith(" ")]
  assert heads[:4] == ["encoder", "decoder", "evaluate", "toy"]   # registry order, unknown last
  assert lines[0] == "encoder: steps=4, seconds=2, val_gme=0.5"
  assert lines[1].strip().startswith("steps: ")
  assert any(l.strip().startswith("val_gme: mean GME over held-out minibatches") for l in lines)
  assert sum(l.strip().startswith("steps: ") for l in lines) == 1   # explained once
  plots_line = next(l for l in lines if l.strip().startswith("plots: "))
  assert plots_line.strip() == ("plots: loss_curves.png, encoder/latent_scatter.png, "
                                "evaluate/prior_vs_noprior.png")
  assert main.headline("encoder", summary["encoder"]) == lines[0]


# --------------------------------------------------------------------------- plots


def test_plots_label_their_axes_and_split_the_paired_grid(tmp_path, monkeypatch):
  from gpe_jax import plots
  figures = []
  real_save = plots._save
  monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append(fig),
                                                         real_save(fig, path))[1])
  records = [{"stage": "encoder", "step": s, "loss": 1.0 / s, "val_gme": 0.5 / s}
             for s in (1, 2, 3)] + [{"stage": "prior", "step": 1, "loss": -0.5}]
  plots.loss_curves(records, tmp_path / "curves.png")
  axes = [ax for ax in figures[-1].axes if ax.get_visible()]
  assert [ax.get_ylabel() for ax in axes] == ["loss, val_gme (log scale)", "loss"]
  assert all(ax.get_xlabel() == "step" for ax in axes)
  imgs = np.linspace(-1, 1, 8 * 8 * 8).reshape(8, 8, 8, 1)
  path = plots.paired_grid(imgs, -imgs, tmp_path / "pair.png", titles=("with", "without"))
  assert os.path.getsize(path) > 0
  fig = figures[-1]
  assert [ax.get_title() for ax in fig.axes] == ["with", "without"]
  rules = [a for a in fig.artists if a.__class__.__name__ == "Line2D"]
  assert len(rules) == 1
  x = rules[0].get_xdata()[0]
  left, right = (ax.get_position() for ax in fig.axes)
  assert left.x1 < x < right.x0
  assert os.path.getsize(plots.paired_grid(np.zeros((5, 3)), np.ones((4, 3)),
                                           tmp_path / "vec.png", titles=("a", "b"))) > 0


def test_command_logging_drops_the_backend_probe_line():
  """jax's INFO 'Unable to initialize backend ...' (every platform it probes and does not find)
  is not printed by the commands; its warnings are."""
  import logging
  from gpe_jax import logs
  probe = logging.getLogger("jax._src.xla_bridge")
  root = logging.getLogger()
  saved = probe.level, root.level
  try:
    logs.setup_logging(verbose=False)
    assert not probe.isEnabledFor(logging.INFO) and probe.isEnabledFor(logging.WARNING)
    assert logging.getLogger("gpe_jax").isEnabledFor(logging.INFO)
  finally:
    probe.setLevel(saved[0])
    root.setLevel(saved[1])


def test_compilation_cache_repair_removes_entries_without_access_time(tmp_path):
  """A bounded jax cache reads every entry's KEY-atime before each write: one entry without
  it (written by an unbounded process, or killed between the two writes) made every later
  write fail. The repair removes such entries and nothing else."""
  from gpe_jax import cli
  for name in ("a-cache", "a-atime", "orphan-cache", "lone-atime"):
    (tmp_path / name).write_bytes(b"\0" * 8)
  try:
    from jax._src import lru_cache   # the mechanism itself, when this jax has it
  except ImportError:
    lru_cache = None
  if lru_cache is not None:
    with pytest.raises(FileNotFoundError):
      lru_cache.LRUCache(str(tmp_path), max_size=1 << 20).put("new", b"x")
  assert cli.repair_compilation_cache(str(tmp_path)) == 1
  assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
      "a-atime", "a-cache", "lone-atime"]
  assert cli.repair_compilation_cache(str(tmp_path)) == 0
  if lru_cache is not None:
    lru_cache.LRUCache(str(tmp_path), max_size=1 << 20).put("new", b"x")
    assert (tmp_path / "new-cache").exists() and (tmp_path / "new-atime").exists()
  assert cli.repair_compilation_cache(str(tmp_path / "missing")) == 0


def test_compilation_cache_prune_keeps_the_most_recent_under_the_bound(tmp_path):
  """Commands bound the cache themselves, once at start (jax's own bound lists the folder
  before every write): over the bound the least recently used entries go, with their atime
  files, until 3/4 of it is left; at or under it nothing goes; other files are not entries."""
  from gpe_jax import cli
  for i in range(10):
    entry = tmp_path / f"k{i}-cache"
    entry.write_bytes(b"\0" * 100)
    os.utime(entry, (1_000 + i, 1_000 + i))
  (tmp_path / "k0-atime").write_bytes(b"\0" * 8)
  (tmp_path / "k9-atime").write_bytes(b"\0" * 8)
  (tmp_path / "notes.txt").write_bytes(b"\0" * 5_000)
  assert cli.prune_compilation_cache(str(tmp_path), 1_000) == 0   # 1,000 bytes: at the bound
  assert len(list(tmp_path.iterdir())) == 13
  assert cli.prune_compilation_cache(str(tmp_path), 900) == 4     # to <= 675 bytes: 6 left
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      [f"k{i}-cache" for i in range(4, 10)] + ["k9-atime", "notes.txt"])
  os.utime(tmp_path / "k4-cache", (2_000, 1_004))   # read since: the most recently used now
  assert cli.prune_compilation_cache(str(tmp_path), 500) == 3     # to <= 375 bytes: 3 left
  assert sorted(p.name for p in tmp_path.glob("*-cache")) == ["k4-cache", "k8-cache",
                                                              "k9-cache"]
  assert cli.prune_compilation_cache(str(tmp_path / "missing"), 1) == 0


def test_command_cache_is_pruned_at_start_and_not_bounded_by_jax(tmp_path, monkeypatch):
  """The default command cache: pruned by ``enable_compilation_cache`` when over its bound,
  and left unbounded for jax (no listing of the folder per write)."""
  import jax
  from gpe_jax import cli
  before = {k: getattr(jax.config, k) for k in (
      "jax_compilation_cache_dir", "jax_compilation_cache_max_size",
      "jax_persistent_cache_min_compile_time_secs")}
  monkeypatch.delenv(cli.COMPILATION_CACHE_ENV, raising=False)
  monkeypatch.setenv("GPE_JAX_CACHE", str(tmp_path))
  monkeypatch.setattr(cli, "CACHE_MAX_BYTES", 400)
  (tmp_path / "xla").mkdir()
  for i in range(5):
    entry = tmp_path / "xla" / f"k{i}-cache"
    entry.write_bytes(b"\0" * 100)
    os.utime(entry, (1_000 + i, 1_000 + i))
  try:
    jax.config.update("jax_compilation_cache_max_size", -1)
    assert cli.enable_compilation_cache() == str(tmp_path / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    assert jax.config.jax_compilation_cache_max_size == -1
    assert sorted(p.name for p in (tmp_path / "xla").iterdir()) == ["k2-cache", "k3-cache",
                                                                    "k4-cache"]
  finally:
    for k, v in before.items():
      jax.config.update(k, v)


def test_experiment_workers_bound_the_compilation_cache_as_the_parent_does(tmp_path,
                                                                          monkeypatch):
  """Worker processes of an experiment (``experiments.workers``) write into the parent's
  cache folder, so they must bound it the same way (else their entries lack atime files)."""
  import logging
  import jax
  from gpe_jax.experiments import common
  level = logging.getLogger().level
  before = {k: getattr(jax.config, k) for k in (
      "jax_compilation_cache_dir", "jax_compilation_cache_max_size",
      "jax_persistent_cache_min_compile_time_secs")}
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  try:
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
    jax.config.update("jax_compilation_cache_max_size", 12345678)
    settings = common._worker_cache(str(tmp_path))   # pylint: disable=protected-access
    assert settings == {"dir": str(tmp_path / "xla"), "max_size": 12345678}
    jax.config.update("jax_compilation_cache_max_size", -1)
    common._init_worker(settings)   # pylint: disable=protected-access
    assert jax.config.jax_compilation_cache_max_size == 12345678
    assert "intra_op_parallelism_threads=1" in os.environ["XLA_FLAGS"]
  finally:
    for k, v in before.items():
      jax.config.update(k, v)
    logging.getLogger().setLevel(level)
