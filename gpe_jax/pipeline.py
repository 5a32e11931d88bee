"""Runs the configured stages in order; stages hand off through files in the workdir.

    data -> encoder (GME) -> encoder/manifest.json -> decoder (reconstruction)
         -> decoder/manifest.json (method 'gpe': encoder + decoder) -> prior (flow matching on
         normalised latents) -> sample (ODE + decoder, samples.npz) -> evaluate

The pipeline knows no concrete stage: it iterates ``stages.registry``. Before it writes anything
(the workdir itself is created only then) it validates the whole config against the registry
and the data, and checks that every finished stage it would reuse was computed from the inputs
this run asks for: a run that cannot start leaves no workdir behind. Then, per stage:

  * finished, same inputs, same upstream results: kept (skipped);
  * finished with the same inputs but ``num_steps`` raised (or ``target_loss`` tightened), or its
    final checkpoint is gone: it trains on from its last checkpoint (resume is exact);
  * its own config changed (another ``latent_dim``, lr, ...) after it finished or started: the
    run stops with a ``StaleError`` naming the changed keys and the fix;
  * an upstream result it consumed changed (a retrained encoder, another method): it is trained
    again, its old outputs moved to ``workdir/stale/<stage>-<time>`` (never deleted).
After the run every other finished stage on disk whose inputs changed is moved aside the same
way, and ``summary.json`` is rebuilt from the records of what is on disk.

In a multi-process run every process runs every stage (the train steps and evaluations are
collectives), process 0 alone writes records, plots and summaries, and the processes meet at a
barrier before and after each stage, so each reads the records process 0 has written.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time

import jax

from gpe_jax import autoencoders, logs, parallel, plots, sampling, train_loop
from gpe_jax.data import load_dataset
from gpe_jax.errors import ConfigError, StaleError
from gpe_jax.stages import common, registry

LOOP_MINIMA = {"num_steps": 1, "log_every": 1, "eval_every": 1, "checkpoint_every": 1,
               "keep_checkpoints": 1}
LOCK_WHAT = "python -m gpe_jax.main"   # what holds a run's workdir lock, for a second run's message


def validate(config, workdir: str = "") -> None:
  """Fail fast, with the fix in the message, on configs that cannot run (before any data is
  loaded; ``validate_with_data`` checks what needs the data)."""
  stages = tuple(config.stages)
  known = registry.names()
  unknown = [s for s in stages if s not in known]
  if unknown or not stages:
    raise ConfigError(f"config.stages={stages!r}: unknown stage(s) {unknown}. Known stages, in "
                      f"pipeline order: {known}; e.g. --config.stages=\"('encoder','decoder')\".")
  order = [known.index(s) for s in stages]
  if order != sorted(order) or len(set(stages)) != len(stages):
    raise ConfigError(f"config.stages={stages!r} is out of order or repeats a stage; stages "
                      f"hand over through the workdir in the order {known}.")
  methods = registry.methods()
  if config.method not in methods:
    raise ConfigError(f"config.method={config.method!r} is not a method; use one of "
                      f"{tuple(methods)}.")
  generator = registry.get(methods[config.method]).generator
  samplers = [s for s in stages if registry.get(s).latent_sampler]
  if generator and samplers:
    raise ConfigError(f"config.method={config.method!r} generates G(z) from N(0, I) noise and "
                      f"has no use for a latent prior, but config.stages lists {samplers}. Drop "
                      f"it: --config.stages=\"{tuple(s for s in stages if s not in samplers)!r}\".")
  if int(config.model.latent_dim) < 1:
    raise ConfigError(f"config.model.latent_dim={config.model.latent_dim} must be >= 1.")
  if int(config.data.batch_size) < 1:
    raise ConfigError(f"config.data.batch_size={config.data.batch_size} must be >= 1.")
  for name in stages:
    spec = registry.get(name)
    if spec.trains:
      section = config[name]
      for key, least in LOOP_MINIMA.items():
        if key in section and int(section[key]) < least:
          raise ConfigError(f"config.{name}.{key}={section[key]} must be >= {least}"
                            + (" (a stage that runs trains at least one step; leave it out "
                               "of config.stages to skip it)" if key == "num_steps" else "")
                            + ".")
      train_loop.check_schedule(section, f"config.{name}")
      _check_optimizer(section, f"config.{name}")
      from gpe_jax.evals import plugins
      plugins.check_names(tuple(section.get("evals", ())), spec.evaluators,
                          f"config.{name}.evals")
    if spec.consumes_method:
      _check_sampling(config)
  _check_needs(config, workdir, stages)


def _check_optimizer(section, where: str) -> None:
  """A training section's optimiser values that cannot train (the GAN methods' per-network
  optimisers are checked by their stage's ``validate``)."""
  if "lr" in section and not float(section.lr) > 0:
    raise ConfigError(f"{where}.lr={section.lr} must be > 0 (the peak learning rate), e.g. "
                      f"--{where}.lr=1e-3.")
  for key in ("b1", "b2"):
    if key in section and not 0.0 <= float(section[key]) < 1.0:
      raise ConfigError(f"{where}.{key}={section[key]} must be in [0, 1) (an Adam beta; "
                        f"the defaults are b1=0.5, b2=0.999).")
  for key in ("grad_clip", "warmup_steps"):
    if key in section and not float(section[key]) >= 0:
      raise ConfigError(f"{where}.{key}={section[key]} must be >= 0 (0 = off).")


def _check_sampling(config) -> None:
  from gpe_jax import models
  for where, method in (("config.sample.method", config.sample.method),
                        ("config.prior.eval_method", config.prior.eval_method)):
    if method not in sampling.SOLVERS:
      raise ConfigError(f"{where}={method!r} is not an integrator; use one of "
                        f"{sampling.SOLVERS}.")
  for key in ("num_steps", "batch_size", "num_samples"):
    if int(config.sample[key]) < 1:
      raise ConfigError(f"config.sample.{key}={config.sample[key]} must be >= 1.")
  models.build_velocity(config.prior)   # the velocity net's name


def _done_on_disk(workdir: str, name: str) -> bool:
  return bool(workdir) and common.read_done(os.path.join(workdir, name)) is not None


def _check_needs(config, workdir: str, stages: tuple) -> None:
  """Every stage's inputs are made by an earlier listed stage or are finished on disk."""
  for i, name in enumerate(stages):
    spec = registry.get(name)
    earlier = stages[:i]
    wanted = list(spec.needs)
    if spec.consumes_method:
      completes = registry.methods()[config.method]
      if registry.get(completes).generator:   # G(z) from noise: no latent sampler is read
        wanted = [n for n in wanted if not registry.get(n).latent_sampler]
      wanted.append(completes)
    if spec.encoder_of is not None and spec.encoder_of(config):
      method = spec.encoder_of(config)
      stage = registry.encoder_stage(method)
      if not stage:
        raise ConfigError(f"config.{name} asks for the encoder of method {method!r}, which no "
                          f"stage trains; use one of {tuple(registry.methods())}.")
      wanted.append(stage)
    for need in wanted:
      if need not in earlier and not _done_on_disk(workdir, need):
        raise ConfigError(
            f"Stage '{name}' reads the results of stage '{need}', which is neither listed "
            f"before it in config.stages={stages!r} nor finished in {workdir or 'the workdir'}. "
            f"Add it, e.g. --config.stages=\"{tuple(s for s in registry.names() if s in (*stages, need))!r}\".")


def validate_with_data(config, data) -> None:
  """What needs the data: extractors that need labels or images, weights files, the models'
  fit to the data's shape."""
  from gpe_jax import models
  stages = tuple(config.stages)
  if any(registry.get(s).trains for s in stages):
    models.build_encoder(config.model, data.example_shape)
    models.build_decoder(config.model, data.example_shape)
  for name in stages:
    spec = registry.get(name)
    if spec.validate is not None:
      spec.validate(config, data)
  parallel.check_batch_size(config.data.batch_size, parallel.make_mesh(config.num_devices))


# ----------------------------------------------------------------------------------------------
# Provenance.

def own_inputs(config, name: str) -> dict:
  return common.stage_inputs(registry.get(name), config)


def _stale_own(workdir: str, name: str, rec: dict, inputs: dict, finished: bool) -> StaleError:
  diff = common.config_diff(rec.get("inputs", {}), inputs)
  shown = "; ".join(diff[:6]) + (f" (and {len(diff) - 6} more)" if len(diff) > 6 else "")
  state = "finished" if finished else "started (its checkpoints are there)"
  return StaleError(
      f"Stage '{name}' in {workdir} {state} under another config than this run's: {shown}. "
      "Its results cannot serve this config and are not reused or mixed. Rerun with the "
      f"original values to keep them; or use another --workdir; or move the stage aside to "
      f"train it anew here: mv '{os.path.join(workdir, name)}' "
      f"'{os.path.join(workdir, common.STALE_DIR, name + '-old')}' (later stages that used it "
      "are then trained again too).")


def preflight(config, workdir: str) -> None:
  """Before anything is written: no listed stage may reuse a result (finished or started)
  computed under another config of its own."""
  for name in config.stages:
    if not registry.get(name).trains:
      continue
    inputs = own_inputs(config, name)
    stage_dir = os.path.join(workdir, name)
    for fname, finished in ((common.DONE, True), (common.STARTED, False)):
      rec = logs.read_json(os.path.join(stage_dir, fname))
      if rec is None or "inputs" not in rec:
        continue
      if not finished and not train_loop.checkpoint_steps(
          train_loop.checkpoint_dir(workdir, name)):
        continue   # an attempt that never checkpointed leaves nothing to mix
      if logs.to_jsonable(rec["inputs"]) != inputs:
        raise _stale_own(workdir, name, rec, inputs, finished)
      break


def _provenance(ctx, name: str) -> dict:
  spec = registry.get(name)
  inputs = own_inputs(ctx.config, name)
  upstream = {k: common.upstream_entry(ctx.workdir, d) for k, d in spec.upstream(ctx).items()}
  return {"inputs": inputs, "upstream": upstream,
          "fingerprint": common.fingerprint(inputs, upstream)}


def _is_finished(ctx, name: str, rec: dict) -> str:
  """'' when the record ``rec`` of a stage with the current inputs still stands, else why not."""
  spec = registry.get(name)
  stage_dir = os.path.join(ctx.workdir, name)
  if not spec.trains:
    missing = [f for f in spec.outputs if not os.path.exists(os.path.join(stage_dir, f))]
    return f"its outputs {missing} are gone" if missing else ""
  steps = train_loop.checkpoint_steps(train_loop.checkpoint_dir(ctx.workdir, name))
  if int(rec.get("steps", -1)) not in steps:
    return (f"its final checkpoint (step {rec.get('steps')}) is gone; it trains again from "
            f"{'step ' + str(steps[-1]) if steps else 'scratch'} (resume is exact)")
  cfg = ctx.config[name]
  target = float(cfg.get("target_loss", 0.0) or 0.0)
  if rec.get("stopped_by") == "num_steps" and int(rec["steps"]) >= int(cfg.num_steps):
    return ""
  if rec.get("stopped_by") == "target_loss" and target > 0 and rec["target_loss"] <= target:
    return ""
  return "num_steps or target_loss asks for more training; it continues"


def _adopt_legacy(ctx, name: str, rec: dict) -> dict:
  """A done record written before records carried provenance: take it as made under this
  config (as such workdirs always were), give it a manifest, and rewrite it."""
  spec = registry.get(name)
  ctx.provenance = _provenance(ctx, name)
  logging.warning("%s: finished before stage records carried their inputs; taking it as "
                  "trained under this config", name)
  if spec.write_manifest is not None and autoencoders.read_manifest(
      os.path.join(ctx.workdir, name)) is None:
    spec.write_manifest(ctx, int(rec.get("steps", 0)))
  summary = logs.read_json(os.path.join(ctx.workdir, "summary.json"), {}).get(name, {})
  new = dict(ctx.provenance, stage=name, summary=summary,
             **{k: rec[k] for k in ("steps", "stopped_by", "target_loss") if k in rec})
  logs.write_json(os.path.join(ctx.workdir, name, common.DONE), new)
  return new


def adopt_legacy(ctx) -> None:
  """Records of a workdir made before stage records carried provenance: training stages are
  adopted (``_adopt_legacy``), sampling and evaluation are made again (they are cheap)."""
  for name in registry.names():
    rec = common.read_done(os.path.join(ctx.workdir, name))
    if rec is None or "inputs" in rec:
      continue
    if registry.get(name).trains:
      _adopt_legacy(ctx, name, rec)
    else:
      common.move_aside(ctx.workdir, name, "its record predates provenance; it is made again")


def run_stage(ctx, name: str) -> dict:
  """Run one stage unless its record still stands (see the module docstring)."""
  spec = registry.get(name)
  stage_dir = os.path.join(ctx.workdir, name)
  rec = common.read_done(stage_dir)
  prov = _provenance(ctx, name)
  ctx.provenance = prov
  if rec is not None:
    if rec.get("inputs") != prov["inputs"] and not spec.trains:
      common.move_aside(ctx.workdir, name, "its settings changed")
    elif rec.get("upstream") != prov["upstream"]:
      common.move_aside(ctx.workdir, name, _upstream_change(rec["upstream"], prov["upstream"]))
    else:
      why = _is_finished(ctx, name, rec)
      if not why:
        logging.info("%s: already finished, skipping", name)
        return rec.get("summary", {})
      logging.info("%s: %s", name, why)
  else:
    started = logs.read_json(os.path.join(stage_dir, common.STARTED))
    if started is not None and started.get("upstream") != prov["upstream"]:
      common.move_aside(ctx.workdir, name, "it was started on other upstream results")
  if spec.trains:
    common.write_started(ctx, name)
  parallel.sync_processes(f"pipeline: {name} starts")   # after process 0's moves and records
  return spec.run(ctx)


def _upstream_change(old: dict, new: dict) -> str:
  parts = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k, {}), new.get(k, {})
    if a != b:
      parts.append(f"{k} {a.get('dir')} step {a.get('steps')} -> {b.get('dir')} step "
                   f"{b.get('steps')}" + (" (another result)" if a.get("dir") == b.get("dir")
                                          and a.get("steps") == b.get("steps") else ""))
  return "the results it was computed from changed: " + "; ".join(parts)


def sweep_stale(workdir: str) -> None:
  """Move aside every finished stage on disk whose upstream results changed or vanished."""
  changed = True
  while changed:   # a moved stage can make its own consumers stale
    changed = False
    for name in registry.names():
      rec = common.read_done(os.path.join(workdir, name))
      if not rec or "upstream" not in rec:
        continue
      for entry in rec["upstream"].values():
        where = autoencoders.resolve(workdir, entry["dir"])
        now = common.upstream_entry(workdir, where)
        if (now["fingerprint"], now["steps"]) != (entry["fingerprint"], entry["steps"]):
          common.move_aside(workdir, name, f"the result it was made from ({entry['dir']}) "
                                           "changed or is gone")
          changed = True
          break


def run(config, workdir: str) -> dict:
  """Run ``config.stages`` in ``workdir``; returns the summary (also in summary.json).

  Everything that can be checked without writing is checked first (the config, the records
  of an existing workdir, the data and what needs it); only then is the workdir created (if
  new) and ``config.json`` written, so a run that fails those checks leaves nothing behind.
  An existing workdir is locked first, so a busy one fails at once.
  """
  workdir = os.path.abspath(workdir)
  with contextlib.ExitStack() as lock:
    if os.path.isdir(workdir):
      lock.enter_context(logs.workdir_lock(workdir, what=LOCK_WHAT))
    validate(config, workdir)
    preflight(config, workdir)
    mesh = parallel.make_mesh(config.num_devices)
    t0 = time.perf_counter()
    data = load_dataset(config.data)
    logging.info("data: %s train %s, held-out %s from %s (%.1f s)", data.name,
                 data.x_train.shape, data.x_test.shape, data.source, time.perf_counter() - t0)
    validate_with_data(config, data)
    logging.info("devices: %d x %s, processes: %d", mesh.devices.size,
                 jax.devices()[0].platform, jax.process_count())
    os.makedirs(workdir, exist_ok=True)
    lock.enter_context(logs.workdir_lock(workdir, what=LOCK_WHAT))  # held already: counted
    return _run_stages(config, workdir, mesh, data)


def _run_stages(config, workdir: str, mesh, data) -> dict:
  """The part of ``run`` that writes: config.json, each stage, then (also when a stage
  failed) the summary of what is on disk and the loss curves."""
  logs.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  writer = logs.MetricsWriter(workdir)
  ctx = common.Context(config=config, workdir=workdir, mesh=mesh, data=data, writer=writer,
                       stage_order=registry.names())
  try:
    adopt_legacy(ctx)
    for name in config.stages:
      run_stage(ctx, name)
      # Process 0 alone writes the stage's records and manifest, which the next stages
      # read on every process: all wait here until they are on disk.
      parallel.sync_processes(f"pipeline: {name} done")
  finally:
    writer.close()
    sweep_stale(workdir)
    summary = common.write_summary(workdir, registry.names())
    if logs.is_main_process():
      plots.loss_curves(logs.read_metrics(workdir), os.path.join(workdir, "loss_curves.png"),
                        title=f"{data.name}: training curves")
  return summary
