"""Table 2 of the paper: seconds per training iteration of each method.

Nothing is trained: each method's real training step, as its stage builds it, is compiled and
timed on a fixed batch at the config's model and batch size:

  * ``gpe_encoder``: the GPE encoder step (``stages.encoder.make_train_step``, GME loss);
  * ``gpe_decoder``: the GPE decoder step on (z, x) pairs (``stages.decoder.make_train_step``;
    the frozen encoder embeds the data once before training, so it is not part of the step);
  * ``vae``, ``ae``, ``vae_mds``, ``ae_mds``: the baselines' joint encoder+decoder steps
    (``stages.baselines.make_train_step``, with the config's beta and MDS weight);
  * ``prior``: the flow-matching prior step (``stages.prior.make_train_step``, EMA included).

Each step is jitted as ``train_loop.run`` jits it (state replicated and donated, batch sharded
on the ``("data",)`` mesh of ``config.num_devices``); compilation is excluded by warm-up calls
and each timed call ends with ``jax.block_until_ready``. The figure is the median over
``TIMED_ITERS`` calls (``SMOKE_TIMED_ITERS`` for smoke configs, those whose encoder trains
fewer than ``SMOKE_STEPS`` steps). The methods are timed round-robin (one call of each per
round), so a change in the machine's load during the measurement hits all of them alike.

    python -m gpe_jax.experiments.table2 --config=configs/fashion_mnist.py --workdir=runs/table2
    python -m gpe_jax.experiments.table2 --config=configs/default.py:smoke --workdir=/tmp/table2
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np
from matplotlib import pyplot as plt

from gpe_jax import parallel, plots, rng
from gpe_jax.data import load_dataset
from gpe_jax.experiments import common
from gpe_jax.stages import registry

TIMED_ITERS = 20
SMOKE_TIMED_ITERS = 3
SMOKE_STEPS = 50
WARMUP = 3          # untimed calls first (the first one compiles)
SMOKE_WARMUP = 1

# The paper's Table 2: seconds per iteration on one V100, MNIST (quoted, not measured here).
PAPER_V100_MNIST = {"gpe_encoder": 0.020, "gpe_decoder": 0.022, "vae": 0.024}

STEP_LABELS = {
    "gpe_encoder": "GPE encoder",
    "gpe_decoder": "GPE decoder",
    "vae": "VAE",
    "ae": "AE",
    "vae_mds": "VAE+MDS",
    "ae_mds": "AE+MDS",
    "prior": "prior (flow matching)",
}


def interleaved_medians(fns: dict[str, Callable[[], Any]], iters: int,
                        warmup: int) -> dict[str, float]:
  """Median wall-clock seconds of each ``fns[name]()``, timed round-robin.

  Every function is first called ``warmup`` times (the first call compiles); then ``iters``
  rounds each time one call of every function, up to ``jax.block_until_ready`` of what it
  returns. Interleaving spreads any change in the machine's load over all the functions
  alike, so their ratios stay meaningful on a shared machine.
  """
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(iters):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(t) for name, t in times.items()}


def prepare_step(step_fn, init_fn, batch: dict, mesh) -> Callable[[], Any]:
  """A no-argument callable running one training step jitted exactly as ``train_loop.run``
  jits it (state replicated and donated, batch sharded over the mesh's "data" axis); each call
  advances the state and returns (state, metrics).

  Args:
    step_fn: (state, batch) -> (state, metrics), as a stage's ``make_train_step`` makes it.
    init_fn: key -> TrainState.
    batch: host arrays of one global batch, fed to every call.
    mesh: the run's mesh.
  """
  rep = parallel.replicated(mesh)
  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  state_sharding = jax.tree.map(lambda _: rep, abstract)
  state = jax.jit(init_fn, out_shardings=state_sharding)(jax.random.key(0))
  step = jax.jit(step_fn, in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                 out_shardings=(state_sharding, rep), donate_argnums=(0,))
  global_batch = parallel.to_global(batch, mesh)
  holder = {"state": state}

  def one_step():
    new_state, metrics = step(holder["state"], global_batch)
    holder["state"] = new_state
    return new_state, metrics
  return one_step


def num_params(init_fn) -> int:
  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  return int(sum(np.prod(a.shape) for a in jax.tree.leaves(abstract.params)))


def is_smoke(config) -> bool:
  return int(config.encoder.num_steps) < SMOKE_STEPS


STEP_NAMES = {"encoder": "gpe_encoder", "decoder": "gpe_decoder"}


def build_steps(config, x: np.ndarray) -> dict:
  """{step name: (step_fn, init_fn, host batch)} of every registered training stage of the GPE
  paper's kind (encoders, decoders, joint autoencoders, the prior; not the GAN methods, whose
  iterations the GMEGAN experiments time), at the config's sizes (``StageSpec.timed_step``).

  ``x`` is one batch of real training examples; latents are standard normal draws (the
  decoder's and the prior's inputs are normalised latents)."""
  d = int(config.model.latent_dim)
  bsz = x.shape[0]
  gen = rng.stream(int(config.seed), "table2.latents")
  z = gen.standard_normal((bsz, d)).astype(np.float32)
  z0 = gen.standard_normal((bsz, d)).astype(np.float32)
  batch = {"x": x, "z": z, "z0": z0}
  return {STEP_NAMES.get(spec.name, spec.name): spec.timed_step(config, batch)
          for spec in registry.specs() if spec.timed_step is not None and not spec.generator}


def _bar_chart(secs: dict, path: str, title: str) -> None:
  names = list(secs)
  fig, (ax, ax_p) = plt.subplots(1, 2, figsize=(12, 4.5),
                                 gridspec_kw={"width_ratios": [len(names) + 1, 3]})
  xs = np.arange(len(names) + 1)
  colours = {"gpe_encoder": "tab:blue", "gpe_decoder": "tab:cyan", "prior": "tab:gray"}
  for i, n in enumerate(names):
    ax.bar(i, secs[n], color=colours.get(n, "tab:orange"))
    ax.text(i, secs[n], f"{secs[n]:.3g}", ha="center", va="bottom", fontsize=7)
  # GPE encoder + decoder, stacked.
  j = len(names)
  ax.bar(j, secs["gpe_encoder"], color="tab:blue")
  ax.bar(j, secs["gpe_decoder"], bottom=secs["gpe_encoder"], color="tab:cyan")
  total = secs["gpe_encoder"] + secs["gpe_decoder"]
  ax.text(j, total, f"{total:.3g}", ha="center", va="bottom", fontsize=7)
  ax.set_xticks(xs)
  ax.set_xticklabels([STEP_LABELS.get(n, n) for n in names] + ["GPE enc.+dec."], rotation=30,
                     ha="right", fontsize=8)
  ax.set_ylabel("seconds / iteration (median)")
  ax.set_title("measured here", fontsize=9)
  pn = list(PAPER_V100_MNIST)
  ax_p.bar(np.arange(len(pn)), [PAPER_V100_MNIST[n] for n in pn],
           color=[colours.get(n, "tab:orange") for n in pn], alpha=0.6, hatch="//")
  for i, n in enumerate(pn):
    ax_p.text(i, PAPER_V100_MNIST[n], f"{PAPER_V100_MNIST[n]:.3f}", ha="center", va="bottom",
              fontsize=7)
  ax_p.set_xticks(np.arange(len(pn)))
  ax_p.set_xticklabels([STEP_LABELS[n] for n in pn], rotation=30, ha="right", fontsize=8)
  ax_p.set_title("paper, quoted (one V100, MNIST)", fontsize=9)
  fig.suptitle(title)
  fig.tight_layout()
  plots._save(fig, path)


def run(config, workdir: str) -> common.Report:
  data = load_dataset(config.data)
  bsz = int(config.data.batch_size)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(bsz, mesh)
  gen = rng.stream(int(config.seed), "table2.batch")
  n_train = data.x_train.shape[0]
  idx = gen.choice(n_train, size=bsz, replace=n_train < bsz)
  x = np.ascontiguousarray(data.x_train[idx])
  shape, name = data.example_shape, data.name
  del data
  smoke = is_smoke(config)
  iters = SMOKE_TIMED_ITERS if smoke else TIMED_ITERS
  warmup = SMOKE_WARMUP if smoke else WARMUP

  fns, params = {}, {}
  for step_name, (step_fn, init_fn, batch) in build_steps(config, x).items():
    fns[step_name] = prepare_step(step_fn, init_fn, batch, mesh)
    params[step_name] = num_params(init_fn)
  t0 = time.perf_counter()
  secs = interleaved_medians(fns, iters, warmup)
  del fns
  for step_name in secs:
    logging.info("table2: %s %.4g s/iteration (%d parameters)", step_name, secs[step_name],
                 params[step_name])
  logging.info("table2: timed in %.1f s, compilation included", time.perf_counter() - t0)

  gpe_sum = secs["gpe_encoder"] + secs["gpe_decoder"]
  vae = secs["vae"]
  ratios = {"gpe_encoder_over_vae": secs["gpe_encoder"] / vae,
            "gpe_decoder_over_vae": secs["gpe_decoder"] / vae,
            "gpe_encoder_plus_decoder_over_vae": gpe_sum / vae}
  p = PAPER_V100_MNIST
  paper_ratios = {"gpe_encoder_over_vae": p["gpe_encoder"] / p["vae"],
                  "gpe_decoder_over_vae": p["gpe_decoder"] / p["vae"],
                  "gpe_encoder_plus_decoder_over_vae": (p["gpe_encoder"] + p["gpe_decoder"])
                                                       / p["vae"]}

  rows = [[STEP_LABELS[n], secs[n], secs[n] / vae, params[n], p.get(n)] for n in secs]
  rows.append(["GPE encoder + decoder (sum)", gpe_sum, gpe_sum / vae,
               params["gpe_encoder"] + params["gpe_decoder"],
               p["gpe_encoder"] + p["gpe_decoder"]])
  table = common.markdown_table(
      ["step", "seconds / iteration (median)", "relative to VAE", "parameters",
       "paper, one V100, MNIST (quoted)"], rows)
  ratio_table = common.markdown_table(
      ["ratio", "measured here", "paper (V100, MNIST)"],
      [[k, ratios[k], paper_ratios[k]] for k in ratios])

  device = jax.devices()[0]
  where = (f"{mesh.devices.size} x {device.device_kind} ({jax.default_backend()})")
  shape_s = "x".join(map(str, shape))
  title = f"{name}, batch {bsz}, {where}"
  _bar_chart(secs, os.path.join(workdir, "table2.png"), f"Seconds per training iteration: {title}")

  summary = (
      f"Seconds per training iteration of every method's real jitted step on {name} "
      f"({shape_s} examples, {config.model.kind} models, latent {config.model.latent_dim}, "
      f"batch {bsz}) on {where}: median of {iters} timed calls after {warmup} warm-up call(s), "
      f"compilation excluded, the methods timed round-robin. A GPE encoder step takes "
      f"{secs['gpe_encoder']:.3g} s and a GPE "
      f"decoder step {secs['gpe_decoder']:.3g} s, vs {vae:.3g} s for a VAE step "
      f"({ratios['gpe_encoder_over_vae']:.2f}x and {ratios['gpe_decoder_over_vae']:.2f}x; the "
      f"paper's V100 ratios are {paper_ratios['gpe_encoder_over_vae']:.2f}x and "
      f"{paper_ratios['gpe_decoder_over_vae']:.2f}x).")
  notes = [
      "The paper's column is quoted from its Table 2 (one V100 GPU, MNIST, its own networks); "
      "it is not measured here, and the absolute numbers are not comparable across hardware "
      "and models: compare the ratios to the VAE step.",
      "GPE trains its encoder and its decoder in two separate stages, so a GPE *iteration* is "
      "either an encoder step or a decoder step; the sum is the cost of one step of each (what "
      "the joint baselines pay per step for their encoder and decoder together). The decoder "
      "step excludes the frozen encoder: the decoder stage embeds the data once, up front.",
      "What is timed: the step function of each stage (forward, backward, Adam update; the "
      "prior's EMA update) jitted with the shardings of `train_loop.run`, on a fixed batch "
      "already on the devices — host-side batch assembly and transfer, logging, evaluation and "
      "checkpointing are excluded, as is the prior's optional host-side OT coupling"
      f" (ot_coupling={bool(config.prior.ot_coupling)}). The batch is {bsz} real training "
      "examples drawn once; latents are standard normal draws."
      + (" Smoke config: only "
         f"{iters} timed calls, so the medians are rough." if smoke else ""),
  ]
  numbers = {
      "seconds_per_iteration": dict(secs),
      "gpe_encoder_plus_decoder": gpe_sum,
      "ratios_to_vae": ratios,
      "num_params": params,
      "timed_iters": iters,
      "warmup_iters": warmup,
      "batch_size": bsz,
      "num_devices": int(mesh.devices.size),
      "dataset": name,
      "paper_v100_mnist": {"seconds_per_iteration": dict(p), "ratios_to_vae": paper_ratios},
  }
  return common.Report(
      title=f"Table 2: seconds per iteration ({name})", summary=summary,
      tables=[table, ratio_table],
      figures={"table2.png": "Median seconds per training iteration of each method's step "
                             "(left, measured here; the last bar stacks the GPE encoder and "
                             "decoder steps) and the paper's quoted V100 MNIST numbers "
                             "(right)."},
      numbers=numbers, notes=notes)


if __name__ == "__main__":
  common.main(run, "gpe_jax.experiments.table2")
