"""GAN methods (PAPERS §2): GMEGAN and the GAN baselines the GMEGAN paper compares with.

Each method is one training stage (its ``config.stages`` entry, folder and config section
share the method's name), trained by the shared loop on an explicit state holding several
networks, each with its own optimiser (``params``, ``opt_state`` and ``batch_stats`` are dicts
keyed by network):

  G    generator, z ~ N(0, I_d) -> x: the decoder family (``config.model.dec_*``)
  T    encoder x -> z (GMEGAN; VAEGAN's (mean, log-variance) encoder; VEEGAN's
       reconstructor): the encoder family (``config.model.enc_*``)
  psi  critic / discriminator x -> R (VEEGAN: a joint critic of (x, z)), sized by
       ``config.gans`` (``critic_hidden``, conv: ``critic_features``)
  f    GMEGAN's inverse network R^d -> R^d, three fully connected ReLU layers
       (``config.gans.inverse_hidden``)

One jitted, sharded step per iteration, on one real batch x [B, ...]: ``n_critic`` updates
of psi (fresh noise each), then the T update, then the G (+ f) update; the noise and the
interpolation weights come from ``fold_in(key, step)``, so a resumed run reproduces an
uninterrupted one exactly. The losses (minimised; sg = stop-gradient, Gz = G(z)):

  gmegan   psi: -(E psi(Gz) - E psi(x)) + (k/2) E[|grad psi(x)|^p + |grad psi(Gz)|^p]
           T:   c_R |z - T(sg Gz)|^2 + c_T GME(x, T x)
           G,f: c_R |z - T(Gz)|^2 + c_G |x - G(f(sg T x))|^2 + (E psi(Gz) - E psi(x))
           (PAPERS §2 / Algorithm 1.) f enters the data reconstruction only: it maps T(x) to
           the noise that G maps back to x, i.e. f inverts T o G. Placing f in the latent
           term as well, z ~ f(T(G z)), lets f absorb any rotation of T o G and G is then no
           longer c-cyclically monotone (measured: 0.0 of point sets pairing optimally, against
           1.0 with the latent term as written, 20,000 iterations on the mixture). With
           ``inverse=False`` f is the identity, as in the authors' scripts. The GME term is
           ``costs.gme_cost``.
  gan      non-saturating GAN (Goodfellow et al. 2014): psi: BCE(psi(x), 1) + BCE(psi(Gz), 0);
           G: BCE(psi(Gz), 1).
  wgan     WGAN (Arjovsky et al. 2017): psi: E psi(Gz) - E psi(x), then every weight clipped
           to [-clip, clip]; G: -E psi(Gz). RMSProp, as published.
  wgan_gp  WGAN-GP (Gulrajani et al. 2017): WGAN's losses, no clipping, plus
           lambda E(|grad psi(x_hat)| - 1)^2 at x_hat = e x + (1 - e) Gz, e ~ U(0, 1).
  wgan_div WGAN-div (Wu et al. 2018): WGAN's losses plus (k/2) E[|grad psi(x)|^p +
           |grad psi(Gz)|^p] at real and fake points (k = 2, p = 6 as published).
  vaegan   VAE/GAN (Larsen et al. 2016) with the reconstruction in data space: T: beta KL/D +
           |x - G(z_q)|^2 (z_q ~ q(z|x)); G: gamma |x - G(sg z_q)|^2 + BCE(psi(Gz), 1); psi as
           the GAN's. (The paper measures the reconstruction in the discriminator's features;
           the GMEGAN authors' comparison, like this one, uses the data space.)
  veegan   VEEGAN (Srivastava et al. 2017): a joint critic D(x, z) trained by BCE to tell
           generator pairs (Gz, z) (label 1) from encoder pairs (x, T x) (label 0); T:
           |z - T(sg Gz)|^2; G: E D(Gz, z) (the log density ratio) + |z - T(Gz)|^2.

The method's hand-off (``<method>/manifest.json``): encoder T (none for GAN/WGAN*) and a
"decoder" G whose input is noise, so ``sample`` and ``evaluate`` use it with no prior.
Scheduled evaluators (``config.<method>.evals``): ``modes`` (mode coverage on the GMEGAN
mixture, ``gpe_jax.evals.modes``) and ``fd_<extractor>``.
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gpe_jax import autoencoders, costs, models, plots, rng, train_loop
from gpe_jax.errors import ConfigError
from gpe_jax.stages import common

# method -> the networks it trains, in update order within a step.
NETS = {
    "gmegan": ("psi", "T", "G", "f"),
    "gan": ("psi", "G"),
    "wgan": ("psi", "G"),
    "wgan_gp": ("psi", "G"),
    "wgan_div": ("psi", "G"),
    "vaegan": ("psi", "T", "G"),
    "veegan": ("psi", "T", "G"),
}
NAMES = tuple(NETS)
WITH_ENCODER = ("gmegan", "vaegan", "veegan")
EVALUATORS = ("modes", "fd_classifier", "fd_pixels", "fd_thumbnail", "fd_inception")
OPTIMIZERS = ("adam", "rmsprop", "sgd")


def nets_of(name: str, section) -> tuple:
  """The networks method ``name`` trains under its config section (GMEGAN's f only when
  ``inverse``)."""
  nets = NETS[name]
  if name == "gmegan" and not bool(section.inverse):
    nets = tuple(n for n in nets if n != "f")
  return nets


def net_optimizer(section, net: str):
  """Network ``net``'s optimiser: its ``lr``, ``b1``, ``b2`` and ``optimizer`` (adam |
  rmsprop | sgd; betas apply to adam) from ``section[net]``; schedule, warm-up and clipping
  from the section."""
  sub = section[net]
  merged = ml_collections.ConfigDict(dict(
      num_steps=int(section.num_steps), lr=float(sub.lr), b1=float(sub.b1), b2=float(sub.b2),
      lr_schedule=section.get("lr_schedule", "constant"),
      warmup_steps=int(section.get("warmup_steps", 0)),
      grad_clip=float(section.get("grad_clip", 0.0))))
  kind = sub.get("optimizer", "adam")
  if kind in ("rmsprop", "sgd"):
    parts = [optax.clip_by_global_norm(merged.grad_clip)] if merged.grad_clip else []
    make = optax.rmsprop if kind == "rmsprop" else optax.sgd
    return optax.chain(*parts, make(train_loop.learning_rate(merged)))
  return train_loop.make_optimizer(merged)


def build(config, name: str, example_shape):
  """({net: module}, {net: optax transformation}) of method ``name``."""
  section, gan_cfg, mcfg = config[name], config.gans, config.model
  nets = nets_of(name, section)
  mods = {"G": models.build_decoder(mcfg, example_shape)}
  if "T" in nets:
    mods["T"] = models.build_encoder(mcfg, example_shape,
                                     out_mult=2 if name == "vaegan" else 1)
  mods["psi"] = (models.build_pair_critic(gan_cfg, mcfg, example_shape) if name == "veegan"
                 else models.build_critic(gan_cfg, mcfg, example_shape))
  if "f" in nets:
    mods["f"] = models.build_inverse(gan_cfg, mcfg)
  return mods, {n: net_optimizer(section, n) for n in nets}


def make_init_fn(name: str, mods: dict, txs: dict, example_shape, latent_dim: int):
  def init_fn(key):
    keys = dict(zip(("G", "T", "psi", "f", "state"), jax.random.split(key, 5)))
    x = jnp.zeros((2,) + tuple(example_shape), jnp.float32)
    z = jnp.zeros((2, latent_dim), jnp.float32)
    params, stats = {}, {}
    for net, mod in mods.items():
      args = {"G": (z,), "T": (x,), "f": (z,), "psi": (x, z) if name == "veegan" else (x,)}
      v = mod.init({"params": keys[net]}, *args[net], train=False)
      params[net], stats[net] = v["params"], v.get("batch_stats", {})
    opt_state = {n: tx.init(params[n]) for n, tx in txs.items()}
    return train_loop.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                 batch_stats=stats, opt_state=opt_state,
                                 rng=jax.random.key_data(keys["state"]))
  return init_fn


def make_train_step(name: str, mods: dict, txs: dict, section, latent_dim: int):
  """step(state, {'x'}) -> (state, metrics): one adversarial iteration of method ``name``
  (module docstring). Metrics: ``loss_<net>`` per network, their sum ``loss`` (the NaN guard
  names the network whose loss is not finite), and the terms."""
  nets = tuple(txs)
  n_critic = int(section.n_critic)
  inverse = "f" in nets
  w = {k: float(section[k]) for k in ("c_T", "c_G", "c_R", "k", "p", "gp_weight", "clip",
                                      "beta", "gamma", "recon_weight") if k in section}

  def run(net, params, stats, inp, train=True, **kw):
    return models.apply_model(mods[net], params[net], stats[net], inp, train=train, **kw)

  def noise(key, n):
    return jax.random.normal(key, (n, latent_dim), jnp.float32)

  def encode(params, stats, x):
    """(T(x) as the method uses it, new T stats, (mean, logvar) for VAEGAN)."""
    h, s = run("T", params, stats, x)
    if name == "vaegan":
      mean, logvar = jnp.split(h, 2, axis=-1)
      return mean, s, (mean, logvar)
    return h, s, None

  def inv(params, z):
    return run("f", params, {"f": {}}, z)[0] if inverse else z

  def critic_loss(psi, params, stats, x, key):
    kz, ke = jax.random.split(key)
    n = x.shape[0]
    z = noise(kz, n)
    xf = jax.lax.stop_gradient(run("G", params, stats, z)[0])
    p = dict(params, psi=psi)
    score = lambda a: run("psi", p, stats, a)[0]  # noqa: E731
    m = {}
    if name in ("gan", "vaegan"):
      loss = costs.bce_logits(score(x), 1.0) + costs.bce_logits(score(xf), 0.0)
    elif name == "veegan":
      zx = jax.lax.stop_gradient(encode(params, stats, x)[0])
      loss = (costs.bce_logits(run("psi", p, stats, xf, z=z)[0], 1.0)
              + costs.bce_logits(run("psi", p, stats, x, z=zx)[0], 0.0))
    else:
      gap = jnp.mean(score(xf)) - jnp.mean(score(x))   # E psi(Gz) - E psi(x)
      if name == "gmegan":
        pen = costs.wdiv_penalty(costs.input_gradients(score, x),
                                 costs.input_gradients(score, xf), w["k"], w["p"])
        loss, m["gap"], m["penalty"] = -gap + pen, gap, pen
      else:
        loss, m["wasserstein"] = gap, -gap
        if name == "wgan_gp":
          e = jax.random.uniform(ke, (n,) + (1,) * (x.ndim - 1), x.dtype)
          pen = costs.wgan_gp_penalty(costs.input_gradients(score, e * x + (1 - e) * xf))
          loss, m["penalty"] = loss + w["gp_weight"] * pen, pen
        elif name == "wgan_div":
          pen = costs.wdiv_penalty(costs.input_gradients(score, x),
                                   costs.input_gradients(score, xf), w["k"], w["p"])
          loss, m["penalty"] = loss + pen, pen
    return loss, m

  def encoder_loss(t, params, stats, x, key):
    p = dict(params, T=t)
    n = x.shape[0]
    if name == "vaegan":
      _, s, (mean, logvar) = encode(p, stats, x)
      zq = mean + jnp.exp(0.5 * logvar) * noise(key, n)
      mse = costs.recon_mse(x, run("G", p, stats, zq)[0])
      kl = jnp.mean(costs.gaussian_kl_per_example(mean, logvar))
      d = float(np.prod(x.shape[1:]))
      return w["beta"] * kl / d + mse, (s, {"kl": kl, "recon_x": mse})
    z = noise(key, n)
    xf = jax.lax.stop_gradient(run("G", p, stats, z)[0])
    tz, _, _ = encode(p, stats, xf)
    if name == "veegan":
      rz = costs.latent_sq_error(z, tz)
      _, s, _ = encode(p, stats, x)
      return w["recon_weight"] * rz, (s, {"recon_z": rz})
    rz = costs.latent_sq_error(z, tz)
    tx, s, _ = encode(p, stats, x)
    gme = costs.gme_cost(x, tx)
    return w["c_R"] * rz + w["c_T"] * gme, (s, {"gme": gme, "recon_z_T": rz})

  def generator_loss(gf, params, stats, x, key):
    p = dict(params, **gf)
    kz, ke = jax.random.split(key)
    n = x.shape[0]
    z = noise(kz, n)
    xf, s = run("G", p, stats, z)
    m = {}
    if name in ("gan", "vaegan"):
      loss = costs.bce_logits(run("psi", p, stats, xf)[0], 1.0)
      if name == "vaegan":
        h = jax.lax.stop_gradient(run("T", p, stats, x)[0])
        mean, logvar = jnp.split(h, 2, axis=-1)
        zq = mean + jnp.exp(0.5 * logvar) * noise(ke, n)
        xr, s = run("G", p, dict(stats, G=s), zq)
        m["recon_x_G"] = costs.recon_mse(x, xr)
        loss = loss + w["gamma"] * m["recon_x_G"]
    elif name == "veegan":
      tz = run("T", p, stats, xf)[0]
      m["recon_z"] = costs.latent_sq_error(z, tz)
      loss = jnp.mean(run("psi", p, stats, xf, z=z)[0]) + w["recon_weight"] * m["recon_z"]
    elif name == "gmegan":
      gap = jnp.mean(run("psi", p, stats, xf)[0]) - jnp.mean(run("psi", p, stats, x)[0])
      m["recon_z"] = costs.latent_sq_error(z, run("T", p, stats, xf)[0])
      tx = jax.lax.stop_gradient(run("T", p, stats, x)[0])
      xr, s = run("G", p, dict(stats, G=s), inv(p, tx))
      m["recon_x"] = costs.recon_mse(x, xr)
      loss = w["c_R"] * m["recon_z"] + w["c_G"] * m["recon_x"] + gap
    else:
      loss = -jnp.mean(run("psi", p, stats, xf)[0])
    return loss, (s, m)

  def step(state, batch):
    x = batch["x"]
    kc, kt, kg = jax.random.split(state.step_key(), 3)
    metrics = {}

    def critic_update(st, i):
      (loss, m), g = jax.value_and_grad(critic_loss, has_aux=True)(
          st.params["psi"], st.params, st.batch_stats, x, jax.random.fold_in(kc, i))
      st = st.apply_net_gradients(txs["psi"], "psi", g)
      if name == "wgan":
        c = w["clip"]
        st = st.replace(params=dict(st.params, psi=jax.tree.map(
            lambda a: jnp.clip(a, -c, c), st.params["psi"])))
      return st, dict(m, loss_psi=loss)

    state, cm = jax.lax.scan(critic_update, state, jnp.arange(n_critic))
    metrics.update({k: v[-1] for k, v in cm.items()})
    if "T" in nets:
      (loss, (s, m)), g = jax.value_and_grad(encoder_loss, has_aux=True)(
          state.params["T"], state.params, state.batch_stats, x, kt)
      state = state.apply_net_gradients(txs["T"], "T", g,
                                        batch_stats=dict(state.batch_stats, T=s))
      metrics.update(m, loss_T=loss)
    gen_nets = tuple(n for n in ("G", "f") if n in nets)
    (loss, (s, m)), g = jax.value_and_grad(generator_loss, has_aux=True)(
        {n: state.params[n] for n in gen_nets}, state.params, state.batch_stats, x, kg)
    for n in gen_nets:
      state = state.apply_net_gradients(txs[n], n, g[n])
    state = state.replace(step=state.step + 1, batch_stats=dict(state.batch_stats, G=s))
    metrics.update(m, loss_G=loss)
    metrics["loss"] = sum(v for k, v in metrics.items() if k.startswith("loss_"))
    return state, metrics
  return step


# ----------------------------------------------------------------------------------------------
# Inference and the stage.

def make_generate(mods: dict):
  """Jitted (params, batch_stats, z [B, d]) -> G(z) [B, ...] in inference mode."""
  infer = models.inference_fn(mods["G"])

  @jax.jit
  def fn(params, batch_stats, z):
    return infer(params["G"], batch_stats["G"], z)
  return fn


def make_embed(mods: dict, name: str):
  """Jitted (params, batch_stats, x) -> T(x) [B, d] (VAEGAN: the mean), inference mode."""
  infer = models.inference_fn(mods["T"])

  @jax.jit
  def fn(params, batch_stats, x):
    h = infer(params["T"], batch_stats["T"], x)
    return models.encode_mean(h) if name == "vaegan" else h
  return fn


def eval_noise(config, num: int) -> np.ndarray:
  """The fixed noise of the scheduled evaluations, [num, d]."""
  return rng.stream(config.seed, "gan.eval").standard_normal(
      (num, int(config.model.latent_dim))).astype(np.float32)


def build_evaluators(ctx, name: str, mods: dict) -> list:
  """Closures state -> dict for ``config.<name>.evals``."""
  from gpe_jax.evals import plugins
  section = ctx.config[name]
  gen = make_generate(mods)
  bsz = int(ctx.config.sample.batch_size)

  def generate(state, num):
    z = eval_noise(ctx.config, num)
    return common.batched_apply(functools.partial(gen, state.params, state.batch_stats), z,
                                bsz)
  return plugins.build_generator_evaluators(ctx, tuple(section.evals), generate,
                                            f"config.{name}.evals")


def run_stage(ctx: common.Context, name: str) -> dict:
  cfg, data = ctx.config, ctx.data
  shape = data.example_shape
  section = cfg[name]
  d = int(cfg.model.latent_dim)
  mods, txs = build(cfg, name, shape)
  evaluators = build_evaluators(ctx, name, mods)

  def eval_fn(state):
    out = {}
    for ev in evaluators:
      out.update(ev(state))
    return out

  stage = train_loop.Stage(
      name=name, cfg=section, init_fn=make_init_fn(name, mods, txs, shape, d),
      step_fn=make_train_step(name, mods, txs, section, d),
      batch_fn=ctx.sampler({"x": data.x_train}), eval_fn=eval_fn if evaluators else None)
  result = train_loop.run(stage, ctx.workdir, ctx.mesh, ctx.writer, cfg.seed)
  state = result.state
  out_dir = ctx.stage_dir(name)
  bsz = int(cfg.sample.batch_size)
  gen = functools.partial(make_generate(mods), state.params, state.batch_stats)
  n_show = int(cfg.gans.eval_samples)
  x_gen = common.batched_apply(gen, eval_noise(cfg, n_show), bsz)
  metrics, stats = {}, None
  if data.is_image:
    plots.image_grid(x_gen[:64], os.path.join(out_dir, "samples.png"),
                     title=f"{data.name}: {name} samples G(z), z ~ N(0, I)")
  else:
    plots.sample_scatter(x_gen, data.x_test, os.path.join(out_dir, "samples.png"),
                         title=f"{data.name}: {name} samples (first two coordinates)")
  if name in WITH_ENCODER:
    embed = functools.partial(make_embed(mods, name), state.params, state.batch_stats)
    metrics, stats, _, _ = common.describe_encoder(ctx, name, embed, f"{name} encoder T")
    metrics.update(monotonicity(cfg, gen, embed, d))
  write_manifest(ctx, name, result.steps, stats)
  summary = common.mark_done(ctx, name, result, metrics)
  logging.info("%s: done after %d steps in %.0f s", name, result.steps, result.seconds)
  return summary


def monotonicity(config, gen, embed, latent_dim: int) -> dict:
  """c-cyclical monotonicity of G for c(z, x) = |z - T(x)|^2 (Thm 3) on sampled point sets:
  ``cm_identity_optimal`` (fraction of sets whose identity pairing is optimal),
  ``cm_worst_violation`` and ``cm_mean_gap`` (``gpe_jax.evals.modes``)."""
  from gpe_jax.evals import modes
  n = int(config.gans.eval_samples)
  z = rng.stream(config.seed, "gan.monotonicity").standard_normal((n, latent_dim)).astype(
      np.float32)
  bsz = int(config.sample.batch_size)
  tz = common.batched_apply(embed, common.batched_apply(gen, z, bsz), bsz)
  out = modes.cyclical_monotonicity(z, tz, seed=int(config.seed))
  return {f"cm_{k}": v for k, v in out.items()}


def write_manifest(ctx: common.Context, name: str, step: int, stats: dict | None) -> None:
  """Method ``name``: encoder T (if any) and the generator G, whose input is noise."""
  ckpt = train_loop.checkpoint_dir(ctx.workdir, name)
  enc = (autoencoders.part(ctx.workdir, ckpt, step, "T",
                           head="mean" if name == "vaegan" else "identity")
         if name in WITH_ENCODER else None)
  dec = autoencoders.part(ctx.workdir, ckpt, step, "G", input="noise")
  autoencoders.write_manifest(ctx.stage_dir(name), autoencoders.autoencoder_manifest(
      name, name, ctx.config, ctx.data.example_shape, enc, dec, stats,
      ctx.data.y_train is not None))


def validate(config, data, name: str) -> None:
  """Hyperparameters and network sizes, before any training."""
  section = config[name]
  problems = []
  if int(section.get("n_critic", 0)) < 1:
    problems.append(f"n_critic={section.get('n_critic')} (the critic takes at least one "
                    "update per iteration)")
  for net in nets_of(name, section):
    sub = section.get(net)
    if sub is None or "lr" not in sub:
      problems.append(f"{net} has no optimiser settings ({net}.lr, {net}.b1, {net}.b2)")
      continue
    if float(sub.lr) <= 0:
      problems.append(f"{net}.lr={sub.lr} (must be > 0)")
    if sub.get("optimizer", "adam") not in OPTIMIZERS:
      problems.append(f"{net}.optimizer={sub.optimizer!r} (use one of {OPTIMIZERS})")
  if "p" in section and float(section.p) < 1:
    problems.append(f"p={section.p} (the penalty's exponent must be >= 1)")
  for key in ("k", "c_T", "c_G", "c_R", "gp_weight", "beta", "gamma", "recon_weight"):
    if key in section and float(section[key]) < 0:
      problems.append(f"{key}={section[key]} (a weight must be >= 0)")
  if name == "wgan" and float(section.clip) <= 0:
    problems.append(f"clip={section.clip} (WGAN clips weights to [-clip, clip], clip > 0)")
  if problems:
    raise ConfigError(f"config.{name}: " + "; ".join(problems) + ". Fix these with "
                      f"--config.{name}.KEY=VALUE (configs/base.py lists every key).")
  build(config, name, data.example_shape)   # network sizes (one clear message each)
  from gpe_jax.evals import plugins
  plugins.check_generator_evaluators(tuple(section.evals), data, config,
                                     f"config.{name}.evals")


def inputs(name: str):
  def fn(config) -> dict:
    return dict(common.training_inputs(name)(config), gans=config.gans.to_dict())
  return fn


def timed_step(config, batch: dict, name: str):
  """(step_fn, init_fn, batch) of one iteration of method ``name``."""
  shape = tuple(batch["x"].shape[1:])
  mods, txs = build(config, name, shape)
  d = int(config.model.latent_dim)
  return (make_train_step(name, mods, txs, config[name], d),
          make_init_fn(name, mods, txs, shape, d), {"x": batch["x"]})


SPECS = tuple(common.StageSpec(
    name=name, run=functools.partial(run_stage, name=name), trains=True, method=name,
    complete=True, generator=True, inputs=inputs(name),
    validate=functools.partial(validate, name=name), evaluators=EVALUATORS,
    timed_step=functools.partial(timed_step, name=name),
    headline=("steps", "seconds", "modes_covered", "high_quality", "gme_all_pairs",
              "cm_identity_optimal")) for name in NAMES)
