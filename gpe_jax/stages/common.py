"""What every stage shares: the run context, the stage protocol (``StageSpec``), and the stage
records that say what each result was computed from.

The stage protocol. Each stage module exports ``SPEC`` (or ``SPECS``), a ``StageSpec``:

  * ``name``: the stage's name, its ``config.stages`` entry, its folder and (training stages)
    its config section;
  * ``run(ctx) -> summary``: does the work (training resumes from the last checkpoint) and
    finishes with ``mark_done`` (and, where it completes a method, a manifest);
  * ``trains``: it is a training stage (config section with ``num_steps``, ``lr``, ...);
  * ``method`` / ``complete``: the method whose manifest it writes, and whether that manifest
    holds a decoder (a whole autoencoder) or only the encoder; ``generator``: that decoder
    is a generator of N(0, I) noise (a GAN), so sampling needs no prior;
  * ``consumes_method``: it works on ``config.method``'s trained autoencoder (prior, sample,
    evaluate); ``needs``: other stages it reads (e.g. sample needs the prior);
  * ``inputs(config) -> dict``: the config its result depends on (beyond ``model``, ``data``
    and ``seed``, which every stage's inputs hold); ``upstream(ctx) -> {stage folder}``: the
    stage folders whose results it consumes;
  * ``validate(config, data)``: raises ConfigError before any training when the config
    cannot run; ``evaluators``: the scheduled evaluator names its section may list;
    ``headline``: summary keys the command line prints.

The registry (``stages/registry.py``) is the only module that imports concrete stages.

Stage records. ``<stage>/done.json`` holds the stage's ``inputs``, the ``upstream`` stages it
consumed (their folder, fingerprint and exact step), the resulting ``fingerprint`` (SHA-256 of
both), its steps and its summary. ``summary.json`` is rebuilt from the done records on disk.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
from typing import Any, Callable

import jax
import numpy as np

from gpe_jax import logs, models
from gpe_jax.autoencoders import (batched_apply, latent_stats,  # noqa: F401  (re-exported)
                                  normalize_latents)
from gpe_jax.data import BatchSampler, Dataset, stream

DONE = "done.json"
STARTED = "inputs.json"
STALE_DIR = "stale"
# Loop settings that change how a stage is run and logged, not what it computes.
LOOP_KEYS = ("num_steps", "target_loss", "log_every", "eval_every", "checkpoint_every",
             "keep_checkpoints", "progress_bar", "evals", "evals_every")


@dataclasses.dataclass
class Context:
  """Everything a stage needs; stages hand results to later ones only through ``workdir``.

  ``provenance`` is set by the pipeline before a stage runs: the inputs and upstream
  records that ``mark_done`` stores in the stage's done record.
  """
  config: Any
  workdir: str
  mesh: Any
  data: Dataset
  writer: logs.MetricsWriter
  provenance: dict = dataclasses.field(default_factory=dict)
  stage_order: tuple = ()   # the registry's order, for summary.json

  def stage_dir(self, name: str) -> str:
    path = os.path.join(self.workdir, name)
    os.makedirs(path, exist_ok=True)
    return path

  def sampler(self, arrays: dict) -> BatchSampler:
    """This process's training batches; the train loop reads them ahead of the steps
    (``config.data.workers`` host threads, ``config.data.prefetch`` steps on the devices)."""
    sampler = BatchSampler(arrays, self.config.data.batch_size, self.config.seed,
                           jax.process_index(), jax.process_count())
    data = self.config.data
    sampler.prefetch = (int(data.get("workers", 0)), int(data.get("prefetch", 1)))
    return sampler


def _no_upstream(ctx) -> dict:
  return {}


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of the pipeline (see the module docstring)."""
  name: str
  run: Callable[[Context], dict]
  trains: bool = False
  method: str = ""
  complete: bool = False
  generator: bool = False   # its decoder maps N(0, I) noise to data: no prior is needed
  latent_sampler: bool = False  # it trains the sampler of a method's latents (the prior),
  #                               which a generator method does without
  consumes_method: bool = False
  needs: tuple = ()
  inputs: Callable[[Any], dict] | None = None
  upstream: Callable[[Context], dict] = _no_upstream
  validate: Callable[[Any, Dataset], None] | None = None
  evaluators: tuple = ()
  headline: tuple = ()
  outputs: tuple = ()   # files a non-training stage must have left for its record to count
  encoder_of: Callable[[Any], str] | None = None  # a method whose encoder it needs ('' none)
  write_manifest: Callable[[Context, int], None] | None = None  # for records that lack one
  # (step_fn, init_fn, batch) of one training step on {'x', 'z', 'z0'} (Table 2 times it)
  timed_step: Callable[[Any, dict], tuple] | None = None


# ----------------------------------------------------------------------------------------------
# Stage records and fingerprints.

def section_inputs(section) -> dict:
  """A training stage's config section without the loop settings (``LOOP_KEYS``)."""
  return {k: v for k, v in section.to_dict().items() if k not in LOOP_KEYS}


# Data fields added after workdirs existed, with the value that reproduces the data those
# workdirs were trained on: at that value a field is left out of the records, so such
# workdirs keep their fingerprints.
_ADDED_DATA_FIELDS = {"mixture": {"layout": "circle", "shift": 0.0}}
# Model fields added later, left out at these values so older workdirs keep their fingerprints.
_ADDED_MODEL_FIELDS = {"dtype": "float32", "enc_kernel": 3, "dec_kernel": 3}


# Data fields that change where or how fast data is read, never a number: not inputs.
_RUNTIME_DATA_FIELDS = ("tfds_data_dir", "workers", "prefetch", "storage")


def base_inputs(config) -> dict:
  """What every stage's result depends on: the model, the data and the seed."""
  data = {k: v for k, v in config.data.to_dict().items() if k not in _RUNTIME_DATA_FIELDS}
  for sub, fields in _ADDED_DATA_FIELDS.items():
    if isinstance(data.get(sub), dict):
      data[sub] = {k: v for k, v in data[sub].items() if fields.get(k, object()) != v}
  model = {k: v for k, v in config.model.to_dict().items()
           if _ADDED_MODEL_FIELDS.get(k, object()) != v}
  out = {"model": model, "data": data, "seed": int(config.seed)}
  if config.get("fast_compile"):   # other compiled programs: other float rounding
    out["fast_compile"] = True
  return out


def stage_inputs(spec: StageSpec, config) -> dict:
  own = spec.inputs(config) if spec.inputs else section_inputs(config[spec.name])
  return logs.to_jsonable(dict(base_inputs(config), stage=own))


def upstream_entry(workdir: str, stage_dir: str) -> dict:
  """How a consumed stage is named in a record: its folder (relative to the workdir when
  inside it), fingerprint and exact step."""
  rec = read_done(stage_dir) or {}
  stage_dir = os.path.abspath(stage_dir)
  root = os.path.abspath(workdir) + os.sep
  where = stage_dir[len(root):] if stage_dir.startswith(root) else stage_dir
  return {"dir": where, "fingerprint": rec.get("fingerprint"), "steps": rec.get("steps")}


def fingerprint(inputs: dict, upstream: dict) -> str:
  text = json.dumps({"inputs": inputs, "upstream": upstream}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_done(stage_dir: str) -> dict | None:
  return logs.read_json(os.path.join(stage_dir, DONE))


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
  """'key: old -> new' for every leaf that differs between two nested dicts."""
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
    name = f"{prefix}{k}"
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_diff(a, b, name + ".")
    elif a != b:
      out.append(f"{name}: {a!r} -> {b!r}")
  return out


def move_aside(workdir: str, name: str, why: str) -> str:
  """Move ``workdir/name`` to ``workdir/stale/name-<UTC time>`` (never delete a result)."""
  src = os.path.join(workdir, name)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
  dst = os.path.join(workdir, STALE_DIR, f"{name}-{stamp}")
  if logs.is_main_process() and os.path.exists(src):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.move(src, dst)
    logging.warning("%s: %s; its old outputs are moved to %s", name, why, dst)
  return dst


def write_started(ctx: Context, name: str) -> None:
  """Record, before training starts or resumes, what this attempt trains from."""
  logs.write_json(os.path.join(ctx.stage_dir(name), STARTED), ctx.provenance)


def mark_done(ctx: Context, name: str, result=None, summary: dict | None = None) -> dict:
  """Write the stage's done record (its provenance, steps and summary) and rebuild
  summary.json. ``result`` is the train loop's Result for training stages, else None."""
  full = {}
  if result is not None:
    full = {"steps": result.steps, "seconds": result.seconds, "stopped_by": result.stopped_by}
    full.update(result.eval_metrics)
  full.update(summary or {})
  full = logs.to_jsonable(full)
  rec = dict(ctx.provenance, stage=name, summary=full,
             finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
  if result is not None:
    cfg = ctx.config[name]
    rec.update(steps=int(result.steps), stopped_by=result.stopped_by,
               target_loss=float(cfg.get("target_loss", 0.0) or 0.0))
  logs.write_json(os.path.join(ctx.stage_dir(name), DONE), rec)
  write_summary(ctx.workdir, ctx.stage_order)
  return full


def write_summary(workdir: str, order: tuple = ()) -> dict:
  """summary.json: {stage: summary} of every done record in the workdir (what is on disk)."""
  summary = {}
  names = [n for n in sorted(os.listdir(workdir)) if n != STALE_DIR
           and os.path.isfile(os.path.join(workdir, n, DONE))] if os.path.isdir(workdir) else []
  names.sort(key=lambda n: order.index(n) if n in order else len(order))
  for n in names:
    rec = read_done(os.path.join(workdir, n))
    summary[n] = rec.get("summary", rec) if isinstance(rec, dict) else {}
  logs.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def inference_fn(model, **kwargs) -> Callable:
  """``models.inference_fn`` (kept here for the stages that import it from common)."""
  return models.inference_fn(model, **kwargs)


def save_latent_stats(path: str, stats: dict) -> None:
  if logs.is_main_process():
    np.savez(path, **stats)


def load_latent_stats(path: str) -> dict:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def training_inputs(name: str) -> Callable[[Any], dict]:
  """``inputs`` of a training stage that ends by describing an encoder: its section without
  the loop settings, and how many training examples its latent statistics use."""
  def inputs(config) -> dict:
    return dict(section_inputs(config[name]),
                latent_stats_samples=int(config.eval.latent_stats_samples))
  return inputs


def sharded_apply(fn: Callable, x: np.ndarray, batch_size: int, mesh) -> np.ndarray:
  """``batched_apply`` over the devices of ``mesh`` and the processes: every batch of
  ``batch_size`` rows (the last padded) is a global array sharded on "data", each process
  feeding its contiguous share (``jax.make_array_from_process_local_data``), and the outputs
  are gathered exactly (a copy, no arithmetic) to a host array [N, ...] on every process.

  ``x`` must be the same on every process (the held-out split is). One process with eight
  devices and two processes with four each run the same per-device program, so they compute
  the same numbers. A ``batch_size`` that the mesh cannot split falls back to
  ``batched_apply`` in a single-process run.

  Args:
    fn: jitted per-batch function of a [batch_size, ...] array (parameters bound).
    x: [N, ...] host array, identical on every process.
    batch_size: rows per call (a multiple of the mesh's devices).
    mesh: the run's ("data",) mesh.
  """
  from jax.experimental import multihost_utils
  from gpe_jax import parallel
  nproc, me = jax.process_count(), jax.process_index()
  if batch_size % mesh.devices.size:
    if nproc == 1:
      return batched_apply(fn, x, batch_size)
    parallel.check_batch_size(batch_size, mesh, "the evaluation batch size")
  share = batch_size // nproc
  sharding = parallel.batch_sharding(mesh)
  outs = []
  for i in range(0, x.shape[0], batch_size):
    xb = np.asarray(x[i:i + batch_size])
    m = xb.shape[0]
    if m < batch_size:
      xb = np.concatenate([xb, np.repeat(xb[-1:], batch_size - m, axis=0)], axis=0)
    local = np.ascontiguousarray(xb[me * share:(me + 1) * share])
    out = fn(jax.make_array_from_process_local_data(sharding, local))
    outs.append(np.asarray(multihost_utils.process_allgather(out, tiled=True))[:m])
  return np.concatenate(outs, axis=0)


def describe_encoder(ctx: Context, stage: str, embed, label: str):
  """What every trained encoder (GPE's or a baseline's) leaves in ``workdir/<stage>/``:
  ``latent_stats.npz`` (PAPERS §1.4), the geometry metrics of its held-out embeddings (PAPERS
  §1.2), ``latent_scatter.png`` and ``distortion.png``.

  The embeddings are computed over the mesh and the processes (``sharded_apply``), so every
  process holds them all and a multi-process run measures what a single process would.

  Args:
    ctx: the run context.
    stage: the stage's name (its folder).
    embed: x [B, ...] -> T(x) [B, d], batched by ``config.data.batch_size`` (a jitted function
      of a global array sharded on "data").
    label: how plots name the encoder.

  Returns:
    (metrics dict with ``latent_scale``, the latent statistics, held-out examples x_geo,
    their embeddings z_geo).
  """
  from gpe_jax import plots
  from gpe_jax.evals import geometry
  cfg, data = ctx.config, ctx.data
  bsz = cfg.data.batch_size
  out_dir = ctx.stage_dir(stage)
  n_stats = min(cfg.eval.latent_stats_samples, data.x_train.shape[0])
  # a streamed split stays streamed: one batch of rows is read and converted at a time
  stats = latent_stats(sharded_apply(embed, stream.head(data.x_train, n_stats), bsz, ctx.mesh))
  save_latent_stats(os.path.join(out_dir, "latent_stats.npz"), stats)
  n_geo = min(cfg.eval.geometry_points, data.x_test.shape[0])
  x_geo = data.x_test[:n_geo]
  z_geo = sharded_apply(embed, x_geo, bsz, ctx.mesh)
  metrics = geometry.geometry_metrics(x_geo, z_geo, alphas=tuple(cfg.eval.alphas),
                                      knn_k=cfg.eval.knn_k)
  metrics["latent_scale"] = float(stats["scale"])
  labels = None if data.y_test is None else data.y_test[:n_geo]
  plots.latent_scatter(z_geo, labels, os.path.join(out_dir, "latent_scatter.png"),
                       title=f"{data.name}: {label}, held-out embeddings")
  dx, dz = geometry.pair_distances(x_geo, z_geo)
  plots.distortion_plot(dx, dz, os.path.join(out_dir, "distortion.png"),
                        title=f"{data.name}: {label}, held-out pair distances, data vs latent")
  return metrics, stats, x_geo, z_geo


# ----------------------------------------------------------------------------------------------
# What the stages after training read: config.method's autoencoder and the prior.

def method_dir(ctx: Context) -> str:
  """The stage folder of ``config.method``'s trained encoder and decoder (its manifest)."""
  from gpe_jax import autoencoders
  from gpe_jax.errors import ConfigError
  found = autoencoders.find(ctx.workdir, ctx.config.method, complete=True)
  if found is None:
    raise ConfigError(
        f"config.method={ctx.config.method!r}: {ctx.workdir} holds no trained encoder and "
        "decoder of that method (no manifest). Train it first: list its stages before the "
        "prior in config.stages (e.g. 'encoder','decoder' for gpe).")
  return found[0]


def load_autoencoder(ctx: Context):
  """``config.method``'s frozen encoder and decoder, from its manifest in the workdir."""
  from gpe_jax import autoencoders
  source = method_dir(ctx)
  return autoencoders.Autoencoder(source, autoencoders.read_manifest(source), ctx.workdir,
                                  ctx.config.data.batch_size)


def prior_dir(ctx: Context) -> str:
  """``workdir/prior``, checked to hold a prior trained on ``config.method``'s latents."""
  from gpe_jax import autoencoders
  from gpe_jax.errors import ConfigError
  path = os.path.join(ctx.workdir, "prior")
  rec = autoencoders.read_manifest(path)
  if rec is None:
    raise ConfigError(f"{ctx.workdir} holds no trained prior (no prior/manifest.json); add "
                      "'prior' to config.stages before 'sample' and 'evaluate'.")
  if rec["method"] != ctx.config.method:
    raise ConfigError(f"The prior in {path} was trained on method {rec['method']!r}'s latents, "
                      f"but config.method={ctx.config.method!r}. Add 'prior' to config.stages "
                      "to train one for this method (the old one is moved aside), or set "
                      f"--config.method={rec['method']}.")
  return path


def samples_noise(ctx: Context) -> bool:
  """Whether ``config.method``'s decoder is a generator of N(0, I) noise (a GAN's G): then
  samples are G(z) and no prior is read."""
  from gpe_jax import autoencoders
  dec = autoencoders.read_manifest(method_dir(ctx))["decoder"]
  return dec["input"] == "noise"


def generator_upstream(ctx: Context) -> dict:
  if samples_noise(ctx):
    return {"autoencoder": method_dir(ctx)}
  return {"prior": prior_dir(ctx), "autoencoder": method_dir(ctx)}


def sample_inputs(config) -> dict:
  """What generated samples depend on beyond the prior and decoder: the sampling settings."""
  return dict(config.sample.to_dict(), method=str(config.method))


def load_generator(ctx: Context, method=None, num_steps=None):
  """(generate, latent_sampler, velocity, params, autoencoder): the workdir's prior and
  ``config.method``'s autoencoder from their manifests; ``generate(num, seed) -> (z0, z, x,
  nfe)`` integrates with ``config.sample``'s solver (or ``method`` / ``num_steps``). For a
  method whose decoder is a noise generator (a GAN), latents are the noise itself
  (``latent_sampler`` is the identity, ``velocity`` and ``params`` are None, NFE 0)."""
  from gpe_jax import autoencoders, sampling
  cfg = ctx.config.sample
  autoencoder = load_autoencoder(ctx)
  if samples_noise(ctx):   # a GAN: x = G(z), z ~ N(0, I); no flow, no prior
    def generate_direct(num: int, seed: int):
      return sampling.generate(sampling.identity_sampler, None, autoencoder.decode_fn, num,
                               ctx.config.model.latent_dim, seed, cfg.batch_size)
    return generate_direct, sampling.identity_sampler, None, None, autoencoder
  pdir = prior_dir(ctx)
  prior = autoencoders.Prior(pdir, autoencoders.read_manifest(pdir), ctx.workdir)
  latent_sampler = sampling.make_latent_sampler(
      prior.velocity, method=method or cfg.method, num_steps=num_steps or cfg.num_steps,
      t0=cfg.t0, t1=cfg.t1, rtol=cfg.rtol, atol=cfg.atol)

  def generate(num: int, seed: int):
    return sampling.generate(latent_sampler, prior.params, autoencoder.decode_fn, num,
                             ctx.config.model.latent_dim, seed, cfg.batch_size)
  return generate, latent_sampler, prior.velocity, prior.params, autoencoder
