"""The workdir as a record a user can trust: provenance, stale stages, the hand-off manifests,
validation before training, and the public ``gpe_jax.load`` API. In-process runs of the smoke
config (one shared finished workdir, copied per case) keep this fast."""
import json
import os
import shutil

import jax
import numpy as np
import optax
import pytest

import gpe_jax
from gpe_jax import autoencoders, errors, logs, models, pipeline, train_loop
from gpe_jax.experiments.common import variant
from gpe_jax.stages import common, registry

from configs import default


def smoke_config(**overrides):
  """The smoke config, evaluated in pixel space (no classifier to train), on one device."""
  return variant(default.get_config("smoke"), **dict({
      "evaluate.extractors": ("pixels",), "prior.evals": ("fm_loss",),
      "sample.compare_solvers": False, "num_devices": 1}, **overrides))


def read(path):
  with open(path) as f:
    return json.load(f)


def ckpt_params(wd, stage, step):
  return autoencoders.restore_variables(train_loop.checkpoint_dir(wd, stage), step)[0]


def assert_same_tree(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("finished") / "wd")
  pipeline.run(smoke_config(), wd)
  return wd


@pytest.fixture
def copy(finished, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(finished, wd)
  return wd


def test_every_stage_records_provenance_and_summary_matches_disk(finished):
  summary = read(os.path.join(finished, "summary.json"))
  assert set(summary) == {"encoder", "decoder", "prior", "sample", "evaluate"}
  enc = read(os.path.join(finished, "encoder", "done.json"))
  dec = read(os.path.join(finished, "decoder", "done.json"))
  assert enc["inputs"]["model"]["latent_dim"] == 10 and enc["steps"] == 4
  assert dec["upstream"]["encoder"] == {"dir": "encoder", "fingerprint": enc["fingerprint"],
                                        "steps": 4}
  for name in summary:
    assert summary[name] == read(os.path.join(finished, name, "done.json"))["summary"]
  manifest = read(os.path.join(finished, "decoder", "manifest.json"))
  assert manifest["method"] == "gpe" and manifest["encoder"]["step"] == 4
  assert manifest["decoder"]["input"] == "normalised"
  assert read(os.path.join(finished, "prior", "manifest.json"))["method"] == "gpe"


def test_case1_deleted_newest_encoder_checkpoint_retrains_it_exactly(copy, finished):
  before = read(os.path.join(copy, "decoder", "done.json"))
  shutil.rmtree(os.path.join(copy, "encoder", "checkpoints", "4"))
  pipeline.run(smoke_config(), copy)
  assert train_loop.checkpoint_steps(train_loop.checkpoint_dir(copy, "encoder"))[-1] == 4
  # resumed from step 2 to the same parameters, so the decoder trained on it is still valid
  assert_same_tree(ckpt_params(copy, "encoder", 4), ckpt_params(finished, "encoder", 4))
  assert read(os.path.join(copy, "decoder", "done.json")) == before
  assert read(os.path.join(copy, "summary.json"))["encoder"]["steps"] == 4


def test_case2_other_latent_dim_on_a_finished_workdir_is_a_clear_error(copy):
  config_before = read(os.path.join(copy, "config.json"))
  with pytest.raises(errors.StaleError, match=r"model\.latent_dim: 10 -> 5") as e:
    pipeline.run(smoke_config(**{"model.latent_dim": 5}), copy)
  assert "another --workdir" in str(e.value) and "'encoder'" in str(e.value)
  assert read(os.path.join(copy, "config.json")) == config_before   # nothing was written


def test_case3_raised_encoder_steps_retrains_every_consumer(copy):
  old_dec = read(os.path.join(copy, "decoder", "done.json"))
  pipeline.run(smoke_config(**{"encoder.num_steps": 6}), copy)
  summary = read(os.path.join(copy, "summary.json"))
  assert summary["encoder"]["steps"] == 6
  dec = read(os.path.join(copy, "decoder", "done.json"))
  assert dec["upstream"]["encoder"]["steps"] == 6 and dec["finished"] != old_dec["finished"]
  assert read(os.path.join(copy, "decoder", "manifest.json"))["encoder"]["step"] == 6
  stale = os.listdir(os.path.join(copy, "stale"))
  for name in ("decoder", "prior", "sample", "evaluate"):   # moved aside, never deleted
    assert any(s.startswith(name + "-") for s in stale), (name, stale)
  prior = read(os.path.join(copy, "prior", "done.json"))
  assert prior["upstream"]["autoencoder"]["fingerprint"] == dec["fingerprint"]


def test_case3b_encoder_alone_moves_its_stale_consumers_aside(copy):
  pipeline.run(smoke_config(**{"encoder.num_steps": 6, "stages": ("encoder",)}), copy)
  assert sorted(os.listdir(copy + "/stale")) and not os.path.exists(copy + "/decoder")
  assert list(read(os.path.join(copy, "summary.json"))) == ["encoder"]
  with pytest.raises(errors.ConfigError, match="holds no trained encoder and decoder"):
    gpe_jax.load(copy, complete=True)


def test_case5_torn_metrics_line_and_corrupt_records(copy):
  with open(os.path.join(copy, "metrics.jsonl"), "a") as f:
    f.write('{"stage": "encoder", "st')   # a kill mid-append
  open(os.path.join(copy, "summary.json"), "w").close()   # rebuilt from the records
  pipeline.run(smoke_config(), copy)
  assert read(os.path.join(copy, "summary.json"))["encoder"]["steps"] == 4
  rows = logs.read_metrics(copy)
  assert rows and all("stage" in r for r in rows)
  open(os.path.join(copy, "encoder", "done.json"), "w").close()
  with pytest.raises(errors.RecordError, match="done.json"):
    pipeline.run(smoke_config(), copy)


def test_case6_bad_values_fail_before_any_training(tmp_path):
  wd = str(tmp_path / "wd")
  with pytest.raises(errors.ConfigError, match="config.sample.method='foo'"):
    pipeline.run(smoke_config(**{"sample.method": "foo"}), wd)
  garbage = tmp_path / "weights.npz"
  garbage.write_bytes(b"not an npz file")
  with pytest.raises(errors.ConfigError, match="not a usable weights file"):
    pipeline.run(smoke_config(**{"evaluate.extractors": ("pixels", "inception"),
                                 "evaluate.inception_weights": str(garbage)}), wd)
  for bad, match in ((("model.latent_dim", 0), "latent_dim=0 must be >= 1"),
                     (("encoder.num_steps", 0), "num_steps=0 must be >= 1"),
                     (("model.kind", "transformer"), "not a model family"),
                     (("prior.net", "unet"), "not a velocity network")):
    with pytest.raises(errors.ConfigError, match=match):
      pipeline.run(smoke_config(**{bad[0]: bad[1]}), wd)
  assert not os.path.exists(os.path.join(wd, "encoder"))   # nothing trained, nothing written


def test_case8_done_record_without_checkpoints_and_a_corrupt_checkpoint(copy, finished):
  shutil.rmtree(os.path.join(copy, "encoder", "checkpoints"))   # done.json remains
  pipeline.run(smoke_config(**{"stages": ("encoder", "decoder")}), copy)
  assert_same_tree(ckpt_params(copy, "encoder", 4), ckpt_params(finished, "encoder", 4))
  # a corrupt newest checkpoint: the message names the step and the command that drops it
  step_dir = os.path.join(copy, "decoder", "checkpoints", "4")
  for root, _, files in os.walk(step_dir):
    for name in files:
      if os.path.basename(root) == "d":   # the array data; the metadata stays readable
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  os.remove(os.path.join(copy, "decoder", "done.json"))
  with pytest.raises(errors.CheckpointError) as e:
    pipeline.run(smoke_config(**{"stages": ("encoder", "decoder")}), copy)
  msg = str(e.value)
  assert "step 4" in msg and f"rm -r '{step_dir}'" in msg and "step 2" in msg
  assert "another config" not in msg


def test_case10_load_needs_no_data_and_matches_the_stages(finished, tmp_path):
  wd = str(tmp_path / "moved")
  shutil.copytree(finished, wd)   # relative paths: a copied workdir still loads
  model = gpe_jax.load(wd)
  from gpe_jax.data import load_dataset
  data = load_dataset(smoke_config().data)
  z = model.encode(data.x_test[:5])
  assert z.shape == (5, 10) and model.latent_stats["mean"].shape == (10,)
  assert model.decode(z).shape == (5, 8, 8, 1)
  np.testing.assert_allclose(model.reconstruct(data.x_test[:5]), model.decode(z), atol=1e-6)
  samples = np.load(os.path.join(wd, "sample", "samples.npz"))
  got = model.sample(4, seed=0)
  np.testing.assert_allclose(got, samples["x"][:4], rtol=1e-5, atol=1e-5)
  assert model.sample(3, seed=0, solver="rk4", steps=2).shape == (3, 8, 8, 1)
  with pytest.raises(errors.ConfigError, match="no trained"):
    gpe_jax.load(wd, method="vae")


# ----------------------------------------------------------------------------------------------
# A new method is one registered spec: a toy autoencoder trained by the shared loop, then the
# library's prior, sample and evaluate stages on it, without touching library files.

def _toy_run(ctx):
  cfg, data = ctx.config, ctx.data
  shape = data.example_shape
  enc, dec = models.build_encoder(cfg.model, shape), models.build_decoder(cfg.model, shape)
  tx = optax.adam(1e-3)

  def init_fn(key):
    k1, k2, k3 = jax.random.split(key, 3)
    pe, be = models.init_variables(enc, k1, shape)
    pd, bd = models.init_variables(dec, k2, (cfg.model.latent_dim,))
    return train_loop.new_state(k3, {"encoder": pe, "decoder": pd},
                                {"encoder": be, "decoder": bd}, tx)

  def step_fn(state, batch):
    def loss(params):
      z, _ = models.apply_model(enc, params["encoder"], state.batch_stats["encoder"],
                                batch["x"], train=False)
      x_hat, _ = models.apply_model(dec, params["decoder"], state.batch_stats["decoder"], z,
                                    train=False)
      return jax.numpy.mean((x_hat - batch["x"]) ** 2)
    value, grads = jax.value_and_grad(loss)(state.params)
    return state.apply_gradients(tx, grads), {"loss": value}

  stage = train_loop.Stage(name="toyae", cfg=cfg.toyae, init_fn=init_fn, step_fn=step_fn,
                           batch_fn=ctx.sampler({"x": data.x_train}))
  result = train_loop.run(stage, ctx.workdir, ctx.mesh, ctx.writer, cfg.seed)
  embed = models.inference_fn(enc)
  raw = lambda x: embed(result.state.params["encoder"], result.state.batch_stats["encoder"], x)
  stats = common.latent_stats(common.batched_apply(raw, data.x_train[:256], 32))
  ckpt = train_loop.checkpoint_dir(ctx.workdir, "toyae")
  autoencoders.write_manifest(ctx.stage_dir("toyae"), autoencoders.autoencoder_manifest(
      "toyae", "toyae", cfg, shape,
      autoencoders.part(ctx.workdir, ckpt, result.steps, "encoder", head="identity"),
      autoencoders.part(ctx.workdir, ckpt, result.steps, "decoder", input="raw"),
      stats, True))
  return common.mark_done(ctx, "toyae", result)


def test_a_new_method_is_one_registered_spec(tmp_path):
  spec = common.StageSpec(name="toyae", run=_toy_run, trains=True, method="toyae",
                          complete=True)
  registry.register(spec)
  try:
    cfg = smoke_config(method="toyae", stages=("toyae", "prior", "sample", "evaluate"))
    cfg.toyae = cfg.ae.copy_and_resolve_references()
    wd = str(tmp_path / "wd")
    summary = pipeline.run(cfg, wd)
    assert set(summary) == {"toyae", "prior", "sample", "evaluate"}
    assert summary["prior"]["method"] == "toyae"
    assert np.isfinite(summary["evaluate"]["fd_pixels_prior"])
    assert read(os.path.join(wd, "evaluate", "metrics.json"))["protocol"]["method"] == "toyae"
    assert gpe_jax.load(wd).method == "toyae"
  finally:
    registry.unregister("toyae")
  assert "toyae" not in registry.names()


def test_another_method_retrains_the_prior_and_keeps_the_old_one_aside(copy):
  summary = pipeline.run(smoke_config(method="ae", stages=("ae", "prior", "sample",
                                                            "evaluate")), copy)
  assert summary["prior"]["method"] == "ae" and summary["evaluate"]["protocol"]["method"] == "ae"
  assert any(s.startswith("prior-") for s in os.listdir(os.path.join(copy, "stale")))
  manifest = read(os.path.join(copy, "ae", "manifest.json"))
  assert manifest["encoder"]["subtree"] == "encoder" and manifest["decoder"]["input"] == "raw"
  model = gpe_jax.load(copy)   # the workdir's prior is now the AE's
  assert model.method == "ae" and model.sample(2, seed=0).shape == (2, 8, 8, 1)
  assert gpe_jax.load(copy, method="gpe").prior is None   # the GPE decoder is still there


def test_data_fields_added_later_keep_old_fingerprints():
  """data.mixture.layout/shift came after workdirs existed: at their old-behaviour values they
  are left out of the records (a digits or circle-mixture workdir keeps its fingerprints),
  any other value is recorded."""
  cfg = default.get_config()
  inputs = common.base_inputs(cfg)
  assert "layout" not in inputs["data"]["mixture"] and "shift" not in inputs["data"]["mixture"]
  assert set(inputs["data"]["mixture"]) == {"num_components", "dim", "num_train", "num_test",
                                            "radius", "std_major", "std_minor", "seed"}
  rings = variant(cfg, **{"data.mixture.layout": "rings", "data.mixture.shift": 0.5})
  got = common.base_inputs(rings)["data"]["mixture"]
  assert got["layout"] == "rings" and got["shift"] == 0.5


def test_model_dtype_and_data_reading_fields_keep_old_fingerprints():
  """model.dtype came later (left out at 'float32', recorded otherwise); data.workers and
  data.prefetch change how data is read, never a number (never recorded)."""
  cfg = default.get_config()
  inputs = common.base_inputs(cfg)
  assert "dtype" not in inputs["model"]
  assert not {"workers", "prefetch", "tfds_data_dir"} & set(inputs["data"])
  bf16 = variant(cfg, **{"model.dtype": "bfloat16", "data.workers": 0})
  got = common.base_inputs(bf16)
  assert got["model"]["dtype"] == "bfloat16" and got["data"] == inputs["data"]


def test_a_run_that_cannot_start_leaves_no_workdir(tmp_path):
  """Validation (config, data, what needs the data) comes before the workdir is created."""
  wd = str(tmp_path / "new")
  with pytest.raises(errors.ConfigError, match=r"config.encoder.lr=-1.0 must be > 0"):
    pipeline.run(smoke_config(**{"encoder.lr": -1.0}), wd)
  with pytest.raises(errors.ConfigError, match=r"config.prior.b2=1.0 must be in \[0, 1\)"):
    pipeline.run(smoke_config(**{"prior.b2": 1.0}), wd)
  with pytest.raises(errors.DataError, match="no IDX files"):
    pipeline.run(smoke_config(**{"data.name": "mnist", "data.path": str(tmp_path / "none")}),
                 wd)
  assert not os.path.exists(wd)
  # an existing workdir with results: the same failures leave it as it was
  kept = tmp_path / "kept"
  (kept / "encoder").mkdir(parents=True)
  (kept / "notes.txt").write_text("results")
  with pytest.raises(errors.ConfigError):
    pipeline.run(smoke_config(**{"encoder.lr": -1.0}), str(kept))
  assert sorted(os.listdir(kept)) == [logs.LOCK_FILE, "encoder", "notes.txt"]
  assert not os.path.exists(kept / "config.json")


def _fail_after_writing(workdir, *files, error=errors.ConfigError("bad")):
  """A command body that writes ``files`` into ``workdir`` and then raises ``error``."""
  with logs.removed_if_nothing_started(str(workdir)):
    for f in files:
      path = os.path.join(workdir, f)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "w") as fh:
        fh.write("{}")
    raise error


def test_a_new_workdir_is_removed_only_while_no_stage_wrote_to_it(tmp_path):
  startup = ("config.json", logs.LOCK_FILE, "logs/process_0.log")
  new = tmp_path / "new"
  with pytest.raises(errors.ConfigError):
    _fail_after_writing(new, *startup)
  assert not new.exists()
  started = tmp_path / "started"   # a stage began: its folder keeps the workdir
  with pytest.raises(errors.ConfigError):
    _fail_after_writing(started, *startup, "encoder/started.json")
  assert sorted(os.listdir(started)) == sorted([*startup[:2], "encoder", "logs"])
  other = tmp_path / "other"       # anything not written before a stage keeps it too
  with pytest.raises(errors.ConfigError):
    _fail_after_writing(other, "config.json", "logs/notes.txt")
  assert other.exists()
  existed = tmp_path / "existed"   # a workdir that existed is never removed, even if empty
  existed.mkdir()
  with pytest.raises(errors.ConfigError):
    _fail_after_writing(existed, *startup)
  assert existed.exists()
  bug = tmp_path / "bug"           # a bug (not a user error) keeps it for inspection
  with pytest.raises(RuntimeError):
    _fail_after_writing(bug, *startup, error=RuntimeError("a bug"))
  assert bug.exists()
  full = tmp_path / "full"         # a full disk is a user error: removed
  with pytest.raises(OSError):
    _fail_after_writing(full, logs.LOCK_FILE,
                        error=OSError(28, "No space left on device", str(full / "config.json")))
  assert not full.exists()
  with logs.removed_if_nothing_started(str(tmp_path / "ok")):   # success: kept
    os.makedirs(tmp_path / "ok")
  assert (tmp_path / "ok").exists()
