"""Evaluators the train loop schedules (every ``eval_every`` steps and at the end of a stage),
listed by name in the stage's config (``config.prior.evals``).

Prior-stage evaluators:
  * ``fm_loss``: held-out flow-matching loss (always on; the stage's ``target_loss`` key);
  * ``fd_<extractor>`` (``fd_classifier``, ``fd_pixels``, ``fd_inception``): draw
    ``config.prior.eval_samples`` samples with the current (EMA) weights and the
    ``eval_method`` integrator, decode them with the trained decoder, and report the Fréchet
    distance to the held-out split in that feature space (key ``fd_<extractor>``), so sample
    quality can be followed during training.

Each evaluator is a closure ``state -> {name: float}`` that jits its own pure functions; the
decoder, the extractor and the reference features are built on first use.
"""
from __future__ import annotations


from gpe_jax import sampling
from gpe_jax.evals import features, frechet
from gpe_jax.parallel import ConfigError

PRIOR_EVALUATORS = ("fm_loss",) + tuple(f"fd_{e}" for e in features.EXTRACTORS)


def build_prior_evaluators(ctx, velocity_model, names) -> list:
  """Closures ``state -> dict`` for the scheduled evaluators of the prior stage.

  Raises:
    ConfigError: an unknown evaluator name.
  """
  unknown = [n for n in names if n not in PRIOR_EVALUATORS]
  if unknown:
    raise ConfigError(f"config.prior.evals names unknown evaluator(s) {unknown}; choose from "
                      f"{PRIOR_EVALUATORS}.")
  return [_fd_evaluator(ctx, velocity_model, n[len("fd_"):]) for n in names
          if n.startswith("fd_")]


def _fd_evaluator(ctx, velocity_model, extractor_name: str):
  from gpe_jax.stages import latent, prior
  cfg = ctx.config
  num = int(cfg.prior.eval_samples)
  sampler = sampling.make_latent_sampler(velocity_model, method=cfg.prior.eval_method,
                                         num_steps=int(cfg.prior.eval_ode_steps),
                                         t0=cfg.sample.t0, t1=cfg.sample.t1,
                                         rtol=cfg.sample.rtol, atol=cfg.sample.atol)
  lazy = {}

  def setup():
    lazy["decode"] = latent.load(ctx).decode
    ext = features.get_extractor(extractor_name, ctx.data, cfg.evaluate)
    lazy["extractor"] = ext
    ref = ctx.data.x_test[:min(num, int(cfg.evaluate.num_reference))]
    lazy["ref"] = frechet.gaussian_stats_np(ext.fn(ref))

  def evaluate(state) -> dict:
    if not lazy:
      setup()
    _, _, x, _ = sampling.generate(sampler, prior.sampling_params(state), lazy["decode"], num,
                                   cfg.model.latent_dim, cfg.seed, cfg.sample.batch_size)
    mu, cov = frechet.gaussian_stats_np(lazy["extractor"].fn(x))
    return {f"fd_{extractor_name}": float(frechet.frechet_distance_np(*lazy["ref"], mu, cov))}
  return evaluate
