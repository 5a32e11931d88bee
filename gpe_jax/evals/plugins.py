"""Evaluators the train loop schedules (every ``eval_every`` steps and at the end of a stage),
listed by name in the stage's config (``config.prior.evals``).

Prior-stage evaluators:
  * ``fm_loss``: held-out flow-matching loss (always on; the stage's ``target_loss`` key);
  * ``fd_<extractor>`` (``fd_classifier``, ``fd_pixels``, ``fd_inception``): draw
    ``config.prior.eval_samples`` samples with the current (EMA) weights and the
    ``eval_method`` integrator, decode them with the trained decoder, and report the Fréchet
    distance to the held-out split in that feature space (key ``fd_<extractor>``), so sample
    quality can be followed during training.

Encoder-stage evaluators (``config.encoder.evals``), the scheduled forms of the Hessian probes
(``gpe_jax.experiments.probes``; PAPERS §1.2, §1.6), on the first ``config.probes.points`` held-out
examples:
  * ``hessian``: extreme eigenvalues of the GME Hessian w.r.t. the embedded points (Lanczos on
    Hessian-vector products): ``hess_gme_min``, ``hess_gme_max``, and ``hess_gme_batch``, the
    GME of that batch (Thm 3: the lower end tends to 0 as the GME falls);
  * ``hessian_mds``: ``hess_mds_min``, ``hess_mds_max``, the extreme eigenvalues of the
    squared-distance (MDS-type) cost's Hessian at the same embedded points (Thm 3);
  * ``bilip``: the fraction of those held-out pairs that are weakly alpha-bi-Lipschitz and the
    Markov bound from their GME, for each alpha of ``config.eval.alphas`` (Thm 2).
Decoder-stage evaluator (``config.decoder.evals``):
  * ``hessian``: extreme eigenvalues of the reconstruction loss's Hessian w.r.t. the decoder's
    parameters on held-out (latent, image) pairs: ``hess_recon_min``, ``hess_recon_max``.
These run every ``config.<stage>.evals_every`` steps (0: at every evaluation) and at the end.

Each evaluator is a closure ``state -> {name: float}`` that jits its own pure functions. The
stage hands evaluators what they need as hooks (an embedding or decoding function, a
``generate(state, num)`` for samples, the held-out data in ``ctx.data``); this module imports no
stage. Extractors and reference features are built on first use.
"""
from __future__ import annotations

import jax
import numpy as np

from gpe_jax import costs
from gpe_jax.evals import features, frechet, geometry, hessian
from gpe_jax.errors import ConfigError

PRIOR_EVALUATORS = ("fm_loss",) + tuple(f"fd_{e}" for e in features.EXTRACTORS)
ENCODER_EVALUATORS = ("hessian", "hessian_mds", "bilip")
DECODER_EVALUATORS = ("hessian",)


def check_names(names, known, where: str) -> None:
  """Raises ConfigError naming ``where`` (e.g. 'config.encoder.evals') for unknown names."""
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ConfigError(f"{where} names unknown evaluator(s) {unknown}; choose from {known}.")


def build_prior_evaluators(ctx, names, generate) -> list:
  """Closures ``state -> dict`` for the scheduled evaluators of the prior stage.

  Args:
    ctx: the run context (config, held-out data).
    names: evaluator names (``PRIOR_EVALUATORS``).
    generate: hook ``(state, num) -> x [num, ...]``: decoded samples of the state's
      sampling weights (the prior stage builds it from the method's decoder).

  Raises:
    ConfigError: an unknown evaluator name.
  """
  check_names(names, PRIOR_EVALUATORS, "config.prior.evals")
  return [_fd_evaluator(ctx, generate, n[len("fd_"):]) for n in names if n.startswith("fd_")]


GENERATOR_EVALUATORS = ("modes",) + tuple(f"fd_{e}" for e in features.EXTRACTORS)


def check_generator_evaluators(names, data, config, where: str) -> None:
  """Names, and what each needs of the data (``modes``: the data is the GMEGAN mixture,
  ``config.data.mixture.layout='rings'``; ``fd_*``: the extractor's own needs)."""
  check_names(names, GENERATOR_EVALUATORS, where)
  if "modes" in names and not (config.data.name == "mixture"
                               and config.data.mixture.layout == "rings"):
    raise ConfigError(f"{where} lists 'modes' (mode coverage of the GMEGAN mixture), but the data "
                      f"is {config.data.name!r}"
                      + (f" with mixture layout {config.data.mixture.layout!r}"
                         if config.data.name == "mixture" else "")
                      + "; it needs --config.data.name=mixture "
                      "--config.data.mixture.layout=rings (configs/gmegan_mixture.py). Drop "
                      "'modes' for other data.")
  fd = tuple(n[len("fd_"):] for n in names if n.startswith("fd_"))
  if fd:
    features.validate_extractors(fd, data, config.evaluate, where)


def build_generator_evaluators(ctx, names, generate, where: str) -> list:
  """Closures ``state -> dict`` for a GAN stage's ``config.<method>.evals``.

  Args:
    ctx: the run context.
    names: evaluator names (``GENERATOR_EVALUATORS``).
    generate: hook ``(state, num) -> x [num, ...]``: samples G(z) of the state's generator
      on a fixed noise batch.
    where: the config key, for messages.

  ``modes``: the mode metrics of ``config.gans.eval_samples`` samples on the GMEGAN mixture
  (``gpe_jax.evals.modes.mode_metrics``: modes covered, high-quality fraction, KL from
  uniform, per-mode balance), so coverage is tracked at every evaluation, not only at the end.
  ``fd_<extractor>``: as the prior's, on ``config.gans.eval_samples`` samples.
  """
  check_names(names, GENERATOR_EVALUATORS, where)
  num = int(ctx.config.gans.eval_samples)
  out = [_fd_evaluator(ctx, generate, n[len("fd_"):], num) for n in names
         if n.startswith("fd_")]
  if "modes" in names:
    from gpe_jax.data import sources
    from gpe_jax.evals import modes
    spec = sources.mixture_spec(ctx.config.data)
    frac = float(ctx.config.gans.mode_min_fraction)

    def mode_eval(state) -> dict:
      m = modes.mode_metrics(generate(state, num), spec["centres"], spec["std_major"],
                             spec["std_minor"], inner=spec["inner"], min_fraction=frac)
      return {k: float(v) for k, v in m.items() if np.isscalar(v)}
    out.append(mode_eval)
  return out


def _fd_evaluator(ctx, generate, extractor_name: str, num: int = 0):
  cfg = ctx.config
  num = num or int(cfg.prior.eval_samples)
  lazy = {}

  def setup():
    ext = features.get_extractor(extractor_name, ctx.data, cfg.evaluate)
    lazy["extractor"] = ext
    ref = np.asarray(ext.fn(ctx.data.x_test[:min(num, int(cfg.evaluate.num_reference))]))
    dim = int(np.prod(ref.shape[1:]))
    if frechet.gram_is_cheaper(ref.shape[0], num, dim):   # few samples of many features
      lazy["ref_features"] = ref
    else:
      lazy["ref"] = frechet.gaussian_stats_np(ref)

  def evaluate(state) -> dict:
    if not lazy:
      setup()
    feats = lazy["extractor"].fn(generate(state, num))
    if "ref_features" in lazy:
      fd = frechet.frechet_distance_gram_np(lazy["ref_features"], feats)
    else:
      fd = frechet.frechet_distance_np(*lazy["ref"], *frechet.gaussian_stats_np(feats))
    return {f"fd_{extractor_name}": float(fd)}
  return evaluate


def _scheduled(stage_cfg, fn):
  """Run ``fn(state)`` every ``stage_cfg.evals_every`` steps (0: every evaluation) and at the
  stage's last step; otherwise report nothing."""
  every = int(stage_cfg.get("evals_every", 0))
  last = int(stage_cfg.num_steps)

  def evaluate(state) -> dict:
    step = int(state.step)
    if every and step % every and step < last:
      return {}
    return fn(state)
  return evaluate


def build_encoder_evaluators(ctx, embed_fn, names) -> list:
  """Closures ``state -> dict`` for ``config.encoder.evals``.

  Args:
    ctx: the run context.
    embed_fn: ``(params, batch_stats, x) -> T(x)`` (jittable inference function).
    names: evaluator names (``ENCODER_EVALUATORS``).
  """
  check_names(names, ENCODER_EVALUATORS, "config.encoder.evals")
  cfg = ctx.config
  n = min(int(cfg.probes.points), ctx.data.x_test.shape[0])
  x = ctx.data.x_test[:n]
  embed = jax.jit(embed_fn)
  out = []
  iters, key = int(cfg.probes.lanczos_iters), jax.random.key(cfg.seed)
  if "hessian" in names:
    eigs = hessian.lanczos_at(hessian.make_embedding_cost(x, "gme"), iters, key)
    gme = jax.jit(costs.gme_cost)

    def hess(state):
      z = embed(state.params, state.batch_stats, x)
      ritz = hessian.ritz_extremes(*eigs(z.reshape(n, -1)))
      return {"hess_gme_min": ritz["lambda_min"], "hess_gme_max": ritz["lambda_max"],
              "hess_gme_batch": float(gme(x, z))}
    out.append(_scheduled(cfg.encoder, hess))
  if "hessian_mds" in names:
    eigs_mds = hessian.lanczos_at(hessian.make_embedding_cost(x, "sqdist"), iters, key)

    def hess_mds(state):
      z = embed(state.params, state.batch_stats, x)
      ritz = hessian.ritz_extremes(*eigs_mds(z.reshape(n, -1)))
      return {"hess_mds_min": ritz["lambda_min"], "hess_mds_max": ritz["lambda_max"]}
    out.append(_scheduled(cfg.encoder, hess_mds))
  if "bilip" in names:
    alphas = tuple(float(a) for a in cfg.eval.alphas)

    def bilip(state):
      z = np.asarray(embed(state.params, state.batch_stats, x))
      m = geometry.geometry_metrics(x, z, alphas=alphas, knn_k=min(int(cfg.eval.knn_k), n - 1))
      return {k: v for k, v in m.items() if k.startswith("weak_bilip_")}
    out.append(_scheduled(cfg.encoder, bilip))
  return out


def build_decoder_evaluators(ctx, decode_fn, z_test, names) -> list:
  """Closures ``state -> dict`` for ``config.decoder.evals``.

  Args:
    ctx: the run context.
    decode_fn: ``(params, batch_stats, z) -> S(z)`` (jittable inference function).
    z_test: held-out normalised latents, aligned with ``ctx.data.x_test``.
    names: evaluator names (``DECODER_EVALUATORS``).
  """
  check_names(names, DECODER_EVALUATORS, "config.decoder.evals")
  cfg = ctx.config
  if "hessian" not in names:
    return []
  n = min(int(cfg.probes.points), z_test.shape[0])
  z, x = z_test[:n], ctx.data.x_test[:n]
  iters, key = int(cfg.probes.lanczos_iters), jax.random.key(cfg.seed)

  @jax.jit
  def eigs(params, batch_stats):
    loss = hessian.make_recon_param_cost(lambda p, z_: decode_fn(p, batch_stats, z_), z, x)
    hvp, dim = hessian.make_hvp(loss, params)
    return hessian.lanczos(hvp, dim, iters, key)

  def hess(state):
    ritz = hessian.ritz_extremes(*eigs(state.params, state.batch_stats))
    return {"hess_recon_min": ritz["lambda_min"], "hess_recon_max": ritz["lambda_max"]}
  return [_scheduled(cfg.decoder, hess)]
