"""Runs the configured stages in order; stages hand off through files in the workdir.

    data -> encoder (GME) -> encoder/latent_stats.npz -> decoder (reconstruction)
         -> prior (flow matching on normalised latents) -> sample (ODE + decoder, samples.npz)
         -> evaluate (Frechet distances, precision/recall vs held-out data)

Rerunning with the same workdir resumes: finished stages are skipped (their ``done.json``),
an interrupted stage continues from its last checkpoint.
"""
from __future__ import annotations

import logging
import os
import time

import jax

from gpe_jax import logs, parallel, plots
from gpe_jax.data import load_dataset
from gpe_jax.data import DataError
from gpe_jax.parallel import ConfigError
from gpe_jax.train_loop import CheckpointError, NonFiniteError
from gpe_jax.stages import baselines, common, decoder, encoder, evaluate, latent, prior, sample

# Errors a user can fix (bad config, absent data, unrestorable checkpoint, NaN loss): the CLIs
# print their one-paragraph message and exit 2 instead of a traceback.
USER_ERRORS = (DataError, ConfigError, CheckpointError, NonFiniteError)

STAGES = {
    encoder.NAME: encoder.run,
    decoder.NAME: decoder.run,
    **baselines.RUNNERS,
    prior.NAME: prior.run,
    sample.NAME: sample.run,
    evaluate.NAME: evaluate.run,
}
TRAINING_STAGES = (encoder.NAME, decoder.NAME) + baselines.NAMES + (prior.NAME,)


def validate(config, workdir: str = "") -> None:
  """Fail fast, with the fix in the message, on configs that cannot run."""
  stages = tuple(config.stages)
  unknown = [s for s in stages if s not in STAGES]
  if unknown or not stages:
    raise ConfigError(f"config.stages={stages!r}: unknown stage(s) {unknown}. Known stages, in "
                      f"pipeline order: {tuple(STAGES)}; e.g. "
                      "--config.stages=\"('encoder','decoder')\".")
  order = [tuple(STAGES).index(s) for s in stages]
  if order != sorted(order):
    raise ConfigError(f"config.stages={stages!r} is out of order; stages hand over through "
                      f"the workdir in the order {tuple(STAGES)}.")
  method = latent.method_of(config)
  uses_latents = [s for s in stages if s in (prior.NAME, sample.NAME, evaluate.NAME)]
  if method != "gpe" and uses_latents and method not in stages and \
      not os.path.isdir(os.path.join(workdir, method)):
    raise ConfigError(f"config.method={method!r}: the stages {uses_latents} use the '{method}' "
                      f"baseline's encoder and decoder, but '{method}' is not in config.stages "
                      f"and {workdir} holds no trained one; add it, e.g. --config.stages="
                      f"\"('{method}','prior','sample','evaluate')\".")
  _validate_evaluations(config, stages)
  for name in (s for s in stages if s in TRAINING_STAGES):
    section = config[name]
    for key in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
      if int(section[key]) < (0 if key == "num_steps" else 1):
        raise ConfigError(f"config.{name}.{key}={section[key]} must be positive.")


def _validate_evaluations(config, stages) -> None:
  """Evaluator and extractor names, and the Inception weights file, checked before training."""
  from gpe_jax.evals import features, plugins
  wanted = []
  for stage, known in (("encoder", plugins.ENCODER_EVALUATORS),
                       ("decoder", plugins.DECODER_EVALUATORS),
                       ("prior", plugins.PRIOR_EVALUATORS)):
    if stage in stages:
      plugins.check_names(tuple(config[stage].get("evals", ())), known, f"config.{stage}.evals")
  if "prior" in stages:
    wanted += [n[len("fd_"):] for n in config.prior.evals if n.startswith("fd_")]
  if "evaluate" in stages:
    features.validate_names(tuple(config.evaluate.extractors), "config.evaluate.extractors")
    wanted += list(config.evaluate.extractors)
  if "inception" in wanted:
    from gpe_jax.evals import inception
    path = config.evaluate.inception_weights
    if not path or not os.path.isfile(path) or str(path).endswith((".pth", ".pt")):
      inception.load_variables(path)  # raises the ConfigError that explains what to do


def run(config, workdir: str) -> dict:
  """Run ``config.stages`` in ``workdir``; returns the summary (also in summary.json)."""
  workdir = os.path.abspath(workdir)
  validate(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  logs.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(config.data.batch_size, mesh)
  t0 = time.perf_counter()
  data = load_dataset(config.data)
  logging.info("data: %s train %s, held-out %s from %s (%.1f s)", data.name,
               data.x_train.shape, data.x_test.shape, data.source, time.perf_counter() - t0)
  logging.info("devices: %d x %s, processes: %d", mesh.devices.size, jax.devices()[0].platform,
               jax.process_count())
  writer = logs.MetricsWriter(workdir)
  ctx = common.Context(config=config, workdir=workdir, mesh=mesh, data=data, writer=writer)
  summary = {}
  try:
    for name in config.stages:
      summary[name] = STAGES[name](ctx)
  finally:
    writer.close()
    if logs.is_main_process():
      plots.loss_curves(logs.read_metrics(workdir), os.path.join(workdir, "loss_curves.png"),
                        title=f"{data.name}: training curves")
  return logs.read_json(os.path.join(workdir, "summary.json"), summary)
