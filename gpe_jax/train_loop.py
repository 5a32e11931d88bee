"""The one shared training loop: every stage (encoder, decoder, prior, baselines, GAN) runs here.

A stage hands the loop pure functions (``init_fn(key) -> TrainState``,
``step_fn(state, batch) -> (state, metrics)``, a host batch function of the step, an optional
held-out evaluation); the loop owns everything else:
  * ``jax.jit`` with explicit shardings on a ("data",) mesh and donated state;
  * orbax checkpoints of the full state (params, optimiser, batch stats, step, RNG) with
    keep-N, and automatic resume: rerunning the same command continues from the latest
    checkpoint, and a checkpoint that cannot be restored is an error, never a silent restart;
  * a NaN/Inf guard naming stage and step; a progress bar with loss and steps/s, whose clock
    (rate, ETA) starts once the first step has compiled;
  * periodic held-out evaluation and early stop at ``target_loss``;
  * metrics.jsonl / TensorBoard logging from process 0 (each row with its wall-clock ``time``
    and the ``elapsed_s`` since the stage started).
Because the batch and the step's RNG are pure functions of (seed, step), a resumed run
reproduces an uninterrupted one exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from gpe_jax import logs, parallel
from gpe_jax.data import prefetch
from gpe_jax.errors import CheckpointError, Interrupted, NonFiniteError  # noqa: F401

# Test hook: SIGKILL this process right after the checkpoint of this step is committed, to
# test that a killed run resumes exactly. Never set in normal use.
KILL_ENV = "GPE_JAX_KILL_AT_STEP"




@flax.struct.dataclass
class TrainState:
  """The full, explicit state of one stage; never mutated in place.

  Attributes:
    step: int32 scalar, number of completed steps.
    params: model parameters (a pytree; several models' params in a dict where a stage
      trains more than one network).
    batch_stats: BatchNorm running statistics ({} when the model has none).
    opt_state: optax state.
    rng: uint32 raw key data of the stage's base key; step keys are ``fold_in(key, step)``.
    ema_params: exponential moving average of ``params`` ({} where a stage keeps none).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = dataclasses.field(default_factory=dict)

  def step_key(self) -> jax.Array:
    """The PRNG key of the current step: fold_in(base key, step)."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

  def apply_gradients(self, tx, grads, ema_decay: float = 0.0, **changes) -> "TrainState":
    """The update tail of every train step: one optimiser step on ``grads``, step + 1.

    Args:
      tx: the stage's optax transformation (the one ``opt_state`` was made by).
      grads: gradients, same tree as ``params``.
      ema_decay: when > 0 (and the state keeps an EMA), also move ``ema_params`` towards the
        new parameters with the warm-up decay ``min(ema_decay, (1 + s) / (10 + s))``, s the
        step before this update, so early averages are not dominated by the initialisation.
      **changes: further fields to replace (e.g. ``batch_stats``).

    Returns:
      The new state (this one is not modified).
    """
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    ema = self.ema_params
    if ema_decay and ema:
      s = self.step.astype(jnp.float32)
      decay = jnp.minimum(ema_decay, (1.0 + s) / (10.0 + s))
      ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                        **changes)

  def apply_net_gradients(self, tx, net: str, grads, **changes) -> "TrainState":
    """One optimiser step of network ``net`` only, in a state that trains several networks
    with one optimiser each (``params``, ``opt_state`` and ``batch_stats`` are dicts keyed by
    network; a GAN's psi, G, T, f). The step counter is not advanced: a step of such a stage is
    several of these updates, and ends with ``replace(step=step + 1)``.

    Args:
      tx: network ``net``'s optax transformation (the one ``opt_state[net]`` was made by).
      net: the network's key.
      grads: gradients, same tree as ``params[net]``.
      **changes: further fields to replace.
    """
    updates, net_opt = tx.update(grads, self.opt_state[net], self.params[net])
    params = dict(self.params)
    params[net] = optax.apply_updates(self.params[net], updates)
    opt_state = dict(self.opt_state)
    opt_state[net] = net_opt
    return self.replace(params=params, opt_state=opt_state, **changes)

  def sampling_params(self):
    """The weights to sample or evaluate with: the EMA where the stage keeps one."""
    return self.ema_params if self.ema_params else self.params


def new_state(key: jax.Array, params, batch_stats, tx, ema: bool = False) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), rng=jax.random.key_data(key),
                    ema_params=jax.tree.map(jnp.copy, params) if ema else {})


@dataclasses.dataclass
class Stage:
  """What a stage gives the loop.

  Attributes:
    name: stage name; its files go to ``workdir/<name>/``.
    cfg: the stage's config section (num_steps, log_every, eval_every, checkpoint_every,
      keep_checkpoints, target_loss).
    init_fn: key -> TrainState, pure.
    step_fn: (state, batch) -> (state, metrics dict of scalars), pure.
    batch_fn: step -> dict of host numpy arrays (this process's slice of the global batch).
    eval_fn: state -> dict of held-out metrics (python floats), or None.
    target_key: which eval metric ``cfg.target_loss`` applies to.
  """
  name: str
  cfg: Any
  init_fn: Callable[[jax.Array], TrainState]
  step_fn: Callable[[TrainState, dict], tuple[TrainState, dict]]
  batch_fn: Callable[[int], dict]
  eval_fn: Callable[[TrainState], dict] | None = None
  target_key: str = ""


@dataclasses.dataclass
class Result:
  state: TrainState
  steps: int
  seconds: float
  stopped_by: str
  eval_metrics: dict


def checkpoint_dir(workdir: str, stage: str) -> str:
  return os.path.abspath(os.path.join(workdir, stage, "checkpoints"))


def abstract_with_sharding(abstract_state, sharding):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      abstract_state)


def checkpoint_steps(ckpt_dir: str) -> list[int]:
  """The finalised checkpoint steps in an orbax directory (ascending; [] when none)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def _leaf_shapes(tree) -> dict:
  """{'a/b/c': shape} of a pytree of arrays, ShapeDtypeStructs or orbax array metadata."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    out["/".join(keys)] = tuple(getattr(leaf, "shape", ()) or ())
  return out


def describe_mismatch(ckpt_dir: str, step: int, abstract_state) -> str:
  """How the checkpoint at ``step`` differs in its parameter shapes from ``abstract_state``
  ('' when they agree, i.e. the checkpoint was written by this config)."""
  with ocp.CheckpointManager(ckpt_dir, item_handlers=ocp.StandardCheckpointHandler()) as mngr:
    meta = mngr.item_metadata(step)
  tree = getattr(meta, "tree", meta)
  saved = _leaf_shapes(tree.get("params", {}) if isinstance(tree, dict) else {})
  wanted = _leaf_shapes(abstract_state.params)
  diffs = [f"{k}: checkpoint {saved.get(k)} vs this config {wanted.get(k)}"
           for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
  if diffs:
    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
    return "parameter shapes differ: " + "; ".join(diffs[:3]) + more
  all_saved = sorted(_leaf_shapes(tree).values()) if isinstance(tree, dict) else []
  if all_saved and all_saved != sorted(_leaf_shapes(abstract_state).values()):
    return ("the parameters agree but the optimiser state does not (another optimiser, "
            "grad_clip or EMA setting)")
  return ""


def restore_checkpoint(ckpt_dir: str, abstract_state, mesh, step: int | None = None,
                       what: str = "") -> TrainState:
  """Restore a TrainState (replicated on ``mesh``) from an orbax directory.

  Raises:
    CheckpointError: with the directory and the step when there is no checkpoint; when it was
      written by another config (the differing parameter shapes are named); or when it is
      corrupt (the message gives the command that drops that step, so the run resumes from
      the previous one).
  """
  target = abstract_with_sharding(abstract_state, parallel.replicated(mesh))
  with ocp.CheckpointManager(ckpt_dir) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint found in {ckpt_dir}{what}.")
    try:
      return mngr.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax raises many types; sort them into the two a user can fix
      cause = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
  try:
    mismatch = describe_mismatch(ckpt_dir, step, abstract_state)
  except Exception:  # unreadable metadata: the step itself is damaged
    mismatch = ""
  if mismatch:
    raise CheckpointError(
        f"The checkpoint at step {step} in {ckpt_dir}{what} was written by another config: "
        f"{mismatch}. Most often the model config (latent_dim, widths, kind) differs from the "
        "run that wrote it. Rerun with the original config, or use another --workdir; the "
        "checkpoint is left untouched.")
  earlier = [s for s in checkpoint_steps(ckpt_dir) if s < step]
  then = (f"the run then resumes from step {earlier[-1]}, the previous checkpoint" if earlier
          else "the stage then trains again from step 0 (there is no earlier checkpoint)")
  raise CheckpointError(
      f"The checkpoint at step {step} in {ckpt_dir}{what} is corrupt and cannot be read "
      f"({cause}). Delete that step and rerun the same command: rm -r '{ckpt_dir}/{step}'; "
      f"{then}.")


def _check_finite(stage: str, step: int, metrics: dict, last_ok: int) -> None:
  """Raise NonFiniteError when the step's loss is not finite. A stage that trains several
  networks reports each one's loss as ``loss_<net>``; the message then names the networks
  whose loss is not finite and their learning-rate keys."""
  loss = metrics["loss"]
  if np.isfinite(loss):
    return
  bad = [k[len("loss_"):] for k, v in metrics.items()
         if k.startswith("loss_") and not np.isfinite(v)]
  if bad:
    values = ", ".join(f"{b}={metrics['loss_' + b]}" for b in bad)
    which = (f"the loss of network{'s' if len(bad) > 1 else ''} {', '.join(bad)} is not "
             f"finite ({values})")
    fix = " or ".join(f"--config.{stage}.{b}.lr" for b in bad)
  else:
    which, fix = f"the training loss is {loss}", f"--config.{stage}.lr"
  raise NonFiniteError(
      f"Stage '{stage}': {which} at step {step} (finite at step "
      f"{last_ok}). Training stopped; checkpoints up to the last finite check are kept. Lower "
      f"{fix}, enable --config.{stage}.grad_clip, or check the data for "
      "NaNs, then rerun the same command to resume from the last checkpoint.")


@contextlib.contextmanager
def _interrupts_deferred():
  """Hold SIGINT/SIGTERM back while a checkpoint is written: an interrupt that lands inside
  orbax's save (its threads and locks) could leave the save hanging, or stop it after its
  directory is on disk but before the manager counts it; held, it is delivered right after the
  save, at a step boundary, and becomes the usual ``Interrupted``.

  Two holds, because a signal sent to the process goes to any thread that does not block it:
  the main thread's signal mask keeps the signal out of its system calls, and Python-level
  handlers that only note the signal keep a delivery to another of the process's threads (orbax,
  tensorstore and XLA run their own) from raising KeyboardInterrupt in the main thread mid-save.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  sigs = (signal.SIGINT, signal.SIGTERM)
  pending = []
  handlers = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in sigs}
  mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(sigs))
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)   # a blocked one is noted here, if any
    for s, h in handlers.items():
      signal.signal(s, h)
    if pending:
      signal.raise_signal(pending[0])   # now, under the handler that was in place before


def run(stage: Stage, workdir: str, mesh, writer: logs.MetricsWriter, seed: int) -> Result:
  """Train ``stage`` to ``cfg.num_steps`` (or ``cfg.target_loss``), resuming if possible."""
  cfg = stage.cfg
  writer.start(stage.name)   # the elapsed_s clock of its metrics.jsonl rows
  ckpt_dir = checkpoint_dir(workdir, stage.name)
  timing_path = os.path.join(workdir, stage.name, "timing.json")
  os.makedirs(os.path.dirname(ckpt_dir), exist_ok=True)
  rep = parallel.replicated(mesh)
  key = jax.random.fold_in(jax.random.key(seed), stage_salt(stage.name))

  abstract = jax.eval_shape(stage.init_fn, key)
  state_sharding = jax.tree.map(lambda _: rep, abstract)
  init = jax.jit(stage.init_fn, out_shardings=state_sharding)
  step_fn = jax.jit(stage.step_fn, in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                    out_shardings=(state_sharding, rep), donate_argnums=(0,))

  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_checkpoints, create=True)
  mngr = ocp.CheckpointManager(ckpt_dir, options=options)
  latest = mngr.latest_step()
  timing = logs.read_json(timing_path, {})
  if latest is not None:
    state = restore_checkpoint(ckpt_dir, abstract, mesh, latest)
    logging.info("%s: resumed from step %d (%s)", stage.name, latest, ckpt_dir)
    writer.truncate(stage.name, latest)
    prior_seconds = float(timing.get(str(latest), 0.0))
  else:
    state = init(key)
    writer.truncate(stage.name, 0)  # rows of an earlier attempt that never checkpointed
    prior_seconds = 0.0
  start = int(state.step)
  num_steps = int(cfg.num_steps)
  kill_at = int(os.environ.get(KILL_ENV, "-1"))

  eval_metrics: dict = {}
  stopped_by = "num_steps"

  def evaluate(step: int) -> bool:
    nonlocal eval_metrics
    if stage.eval_fn is None:
      return False
    eval_metrics = {k: float(v) for k, v in stage.eval_fn(state).items()}
    writer.write(stage.name, step, eval_metrics)
    target = float(cfg.get("target_loss", 0.0) or 0.0)
    return bool(target > 0 and stage.target_key and eval_metrics[stage.target_key] <= target)

  def save(step: int) -> None:
    # Ctrl-C / SIGTERM are taken once the save is on disk; so is the exit for a lost peer
    with _interrupts_deferred(), parallel.checkpoint_guard():
      mngr.save(step, args=ocp.args.StandardSave(state), force=True)
      timing[str(step)] = prior_seconds + time.perf_counter() - t_start
      mngr.wait_until_finished()
      logs.write_json(timing_path, timing)
    if step == kill_at:
      os.kill(os.getpid(), signal.SIGKILL)

  t_start = time.perf_counter()
  last_ok, window_t, window_s = start, time.perf_counter(), start
  bar = tqdm(total=num_steps, initial=start, desc=stage.name, dynamic_ncols=True,
             disable=not logs.is_main_process() or not cfg.get("progress_bar", True),
             mininterval=1.0)
  metrics = None
  step = start
  batches = None
  try:
    if start >= num_steps and stage.eval_fn is not None:
      evaluate(start)
    workers, ahead = getattr(stage.batch_fn, "prefetch", (0, 1))
    batches = prefetch.Prefetcher(stage.batch_fn, lambda b: parallel.to_global(b, mesh), start,
                                  num_steps, workers=workers, host_ahead=max(2 * workers, ahead),
                                  device_ahead=ahead)
    for at, batch in batches:
      state, metrics = step_fn(state, batch)
      step = at + 1
      if step == start + 1:
        # The first call compiled the step: restart the bar's clock now, so its rate and ETA
        # measure training, not compilation (the count keeps its resumed start).
        bar.unpause()
      bar.update(1)
      is_log = step % cfg.log_every == 0 or step == num_steps
      is_ckpt = step % cfg.checkpoint_every == 0 or step == num_steps
      is_eval = step % cfg.eval_every == 0 or step == num_steps
      if is_log or is_ckpt:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(stage.name, step, host, last_ok)
        last_ok = step
        now = time.perf_counter()
        host["steps_per_sec"] = (step - window_s) / max(now - window_t, 1e-9)
        window_t, window_s = now, step
        if is_log:
          writer.write(stage.name, step, host)
          bar.set_postfix(loss=f"{host['loss']:.4g}", it_s=f"{host['steps_per_sec']:.1f}")
      reached = evaluate(step) if is_eval else False
      if reached:
        stopped_by = "target_loss"
      if is_ckpt or reached:
        save(step)
      if reached:
        break
  except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one by the command line
    mngr.wait_until_finished()   # a save in flight is then on disk (and counted)
    mngr.reload()                # the steps on disk, whatever the manager had counted
    saved = mngr.latest_step()
    raise Interrupted(
        f"Interrupted at step {step} of stage '{stage.name}' (last checkpoint: "
        f"{'none' if saved is None else f'step {saved}'}). Rerun the same command to resume "
        "from the last checkpoint; finished stages are kept.", stage.name, step, saved) from None
  finally:
    if batches is not None:
      batches.close()
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
  seconds = prior_seconds + time.perf_counter() - t_start
  if step >= num_steps and start >= num_steps:
    seconds = float(timing.get(str(start), seconds))
  return Result(state=state, steps=step, seconds=seconds, stopped_by=stopped_by,
                eval_metrics=eval_metrics)


# The salts of the stages that existed when salts were the first 4 bytes of the name: kept as
# they were, so those stages' keys (and every number they produce) stay the same.
_PINNED_SALTS = {"encoder": 1868787301, "decoder": 1868784996, "vae": 6644086,
                 "ae": 25953, "vae_mds": 1600479606, "ae_mds": 1834968417,
                 "prior": 1869181552}


def stage_salt(name: str) -> int:
  """A stable integer in [0, 2^31) per stage name, so stages draw independent keys from one
  seed: the first 4 bytes of SHA-256 of the whole name (``wgan_gp`` and ``wgan_div`` differ),
  or the pinned salt of a stage that predates this rule."""
  if name in _PINNED_SALTS:
    return _PINNED_SALTS[name]
  digest = hashlib.sha256(name.encode()).digest()
  return int.from_bytes(digest[:4], "little") % (2 ** 31)


SCHEDULES = ("constant", "cosine")


def check_schedule(stage_cfg, where: str) -> None:
  """Raises ConfigError when ``stage_cfg.lr_schedule`` is not one of ``SCHEDULES``."""
  kind = stage_cfg.get("lr_schedule", "constant")
  if kind not in SCHEDULES:
    raise parallel.ConfigError(f"{where}.lr_schedule={kind!r} is not known; use one of "
                               f"{SCHEDULES}.")


def learning_rate(stage_cfg):
  """The stage's learning rate: constant, or cosine-decayed to 1% over ``num_steps``
  (``lr_schedule='cosine'``), after an optional linear warm-up. The schedule is a function of
  the step in the optimiser state, so resumed runs follow it exactly."""
  import optax
  warmup = int(stage_cfg.get("warmup_steps", 0))
  kind = stage_cfg.get("lr_schedule", "constant")
  if kind == "constant":
    main = optax.constant_schedule(stage_cfg.lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(stage_cfg.lr, max(1, stage_cfg.num_steps - warmup),
                                       alpha=0.01)
  else:
    raise parallel.ConfigError(f"lr_schedule={kind!r} is not known; use 'constant' or 'cosine'.")
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, stage_cfg.lr, warmup), main], [warmup])


def make_optimizer(stage_cfg):
  """Adam with the stage's lr schedule and betas, optional global-norm clipping."""
  import optax
  lr = learning_rate(stage_cfg)
  parts = []
  if stage_cfg.get("grad_clip", 0.0):
    parts.append(optax.clip_by_global_norm(stage_cfg.grad_clip))
  parts.append(optax.adam(lr, b1=stage_cfg.b1, b2=stage_cfg.b2))
  return optax.chain(*parts)
