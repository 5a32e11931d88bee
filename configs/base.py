"""Base config: every section and field, with defaults. Dataset configs override what differs.

Sections: data, model, encoder, decoder, prior (training stages: num_steps, lr, betas, ...,
made by ``stage_config``), sample, evaluate (generation and its measurement), eval (the
held-out evaluations run during and after training).
"""
import ml_collections

from gpe_jax.data import default_data_config
from gpe_jax.evals.classifier import classifier_config


def stage_config(num_steps=1000, lr=1e-4, target_loss=0.0, **overrides):
  """Optimiser and loop settings of one training stage."""
  c = ml_collections.ConfigDict()
  c.num_steps = num_steps
  c.lr = lr
  c.b1 = 0.5            # Adam betas (0.5, 0.999), PAPERS §1.8
  c.b2 = 0.999
  c.grad_clip = 0.0     # global-norm clipping, 0 = off
  c.warmup_steps = 0
  c.lr_schedule = "constant"  # or 'cosine': decay to 1% of lr over num_steps
  c.target_loss = target_loss  # stop when the held-out loss reaches this (0 = off)
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.progress_bar = True
  c.update(overrides)
  return c


GAN_METHODS = ("gmegan", "gan", "wgan", "wgan_gp", "wgan_div", "vaegan", "veegan")


def gan_config(nets, num_steps=2000, lr=2e-4, n_critic=1, b1=0.5, b2=0.999, **weights):
  """A GAN method's section: the loop settings, ``n_critic``, the loss weights, and one
  optimiser sub-section per network (``G``, ``T``, ``psi``, ``f``: lr, b1, b2, optimizer)."""
  c = stage_config(num_steps=num_steps, lr=lr)
  del c["lr"], c["b1"], c["b2"]   # per network, below
  c.n_critic = n_critic
  c.update(weights)
  for net in nets:
    c[net] = ml_collections.ConfigDict(dict(lr=lr, b1=b1, b2=b2, optimizer="adam"))
  c.evals = ()              # 'modes' (GMEGAN mixture), 'fd_<extractor>'
  c.evals_every = 0
  return c


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.stages = ("encoder", "decoder", "prior", "sample", "evaluate")
  # Whose latent space the prior/sample/evaluate stages use: 'gpe' (encoder + decoder stages)
  # or a baseline trained by its own stage: 'vae', 'ae', 'vae_mds', 'ae_mds' (PAPERS §1.7), e.g.
  # --config.method=vae --config.stages="('vae','prior','sample','evaluate')".
  config.method = "gpe"
  config.num_devices = 0   # 0 = all visible devices; the batch is sharded over them
  # XLA's cheap optimisation level for runs whose compile time exceeds their compute (smoke
  # runs; set before the backend starts): faster to start, float rounding may differ.
  config.fast_compile = False

  config.data = default_data_config()

  config.model = m = ml_collections.ConfigDict()
  m.kind = "mlp"           # 'mlp' (vectors, small images) or 'conv' (images)
  m.latent_dim = 10
  m.enc_hidden = (512, 256)
  m.dec_hidden = (256, 512)
  m.layer_norm = False     # MLPs
  m.enc_features = (32, 64, 128)   # conv: one level (x1/2 resolution) per entry
  m.dec_features = (128, 64, 32)   # conv: one level (x2 resolution) per entry
  m.batch_norm = True      # conv
  m.extra_convs = 0        # conv encoder: extra stride-1 convs per level
  m.enc_kernel = 3         # conv encoder: kernel of each level's conv after space-to-depth
  m.dec_kernel = 3         # conv decoder: kernel of its convs
  m.dtype = "float32"      # or 'bfloat16': activations and matmuls/convs of every network in bf16
  #                          (parameters, optimiser state, norms, outputs and losses stay f32)

  config.encoder = stage_config(num_steps=2000, lr=1e-4)
  # How the GME of a batch is laid out over the devices: 'dense' (the [B, B] pair matrix under
  # jit) or 'row_block' (each device its rows' [B/k, B] block, psum'd: O(B^2/k) memory each).
  config.encoder.gme_impl = "dense"
  config.decoder = stage_config(num_steps=2000, lr=1e-4)
  config.decoder.encoder_checkpoint = ""  # '' = workdir/<encoder stage>/checkpoints
  config.decoder.encoder_method = "gpe"   # or a baseline's frozen encoder: 'vae', 'ae', ...
  config.decoder.l1_weight = 0.0          # optional extra L1 term (off: PAPERS §1.3)
  # Scheduled curvature/geometry evaluators (gpe_jax/evals/plugins.py), run every
  # <stage>.evals_every steps (0: at every evaluation) and at the end: encoder 'hessian'
  # (extreme eigenvalues of the GME Hessian on probes.points held-out points), 'hessian_mds'
  # (same for the squared-distance cost), 'bilip' (weak bi-Lipschitz fractions); decoder
  # 'hessian' (of the reconstruction loss w.r.t. the decoder's parameters).
  for name in ("encoder", "decoder"):
    config[name].evals = ()
    config[name].evals_every = 0

  # Baselines (PAPERS §1.7): encoder and decoder trained jointly, same families as GPE.
  # beta weighs the KL against the summed squared error; mds_weight the MDS stress.
  config.vae = stage_config(num_steps=2000, lr=1e-4, beta=1.0)
  config.ae = stage_config(num_steps=2000, lr=1e-4)
  # The stress is in squared data units (pixel distances are O(10) for [-1, 1] images), hence
  # a small default weight.
  config.vae_mds = stage_config(num_steps=2000, lr=1e-4, beta=1.0, mds_weight=0.01)
  config.ae_mds = stage_config(num_steps=2000, lr=1e-4, mds_weight=0.01)

  # GAN methods (PAPERS §2; gpe_jax/stages/gans.py): G is the decoder family, T the encoder
  # family, the critic psi and GMEGAN's inverse network f are sized here. A GAN method is
  # sampled as G(z), z ~ N(0, I), without a prior: e.g. --config.method=gmegan
  # --config.stages="('gmegan','sample','evaluate')".
  config.gans = g = ml_collections.ConfigDict()   # shared by every GAN method
  g.critic_hidden = (512, 256)     # mlp critic; conv critic: Dense layers after the convs
  g.critic_features = (32, 64, 128)  # conv critic: one level (x1/2 resolution) per entry
  g.critic_extra_convs = 0
  g.critic_layer_norm = False
  g.inverse_hidden = (128, 128)    # f: d -> 128 -> 128 -> d, ReLU
  g.pair_hidden = (128,)           # VEEGAN's joint critic head on [features(x), z]
  g.eval_samples = 2000            # samples per scheduled / final evaluation
  g.mode_min_fraction = 0.01       # a mixture mode counts as covered at >= 1% of samples
  # GMEGAN (Algorithm 1): c_T GME weight, c_G data reconstruction, c_R latent reconstruction,
  # penalty (k/2) E|grad psi|^p at real and fake points; inverse: train f (else identity).
  config.gmegan = gan_config(("psi", "T", "G", "f"), c_T=10.0, c_G=1.0, c_R=0.5, k=1.0,
                             p=2.0, inverse=True)
  config.gan = gan_config(("psi", "G"))          # non-saturating GAN
  config.wgan = gan_config(("psi", "G"), lr=5e-5, n_critic=5, clip=0.01)
  config.wgan.psi.optimizer = config.wgan.G.optimizer = "rmsprop"
  config.wgan_gp = gan_config(("psi", "G"), lr=1e-4, n_critic=5, b1=0.0, b2=0.9,
                              gp_weight=10.0)
  config.wgan_div = gan_config(("psi", "G"), lr=2e-4, n_critic=5, k=2.0, p=6.0)
  config.vaegan = gan_config(("psi", "T", "G"), beta=1.0, gamma=5.0)
  config.veegan = gan_config(("psi", "T", "G"), recon_weight=1.0)

  # Stage 3: flow-matching prior in the normalised latent space (PAPERS §1.5). The paper used
  # lr 2e-5 with grad clip 1.0 on GPUs; the CPU configs train shorter with a larger lr.
  config.prior = p = stage_config(num_steps=5000, lr=1e-3, grad_clip=1.0,
                                  lr_schedule="cosine")
  p.net = "mlp"              # 'mlp' (small latents) or 'resmlp' (residual, larger latents)
  p.hidden = (256, 256, 256)  # mlp widths
  p.width = 512              # resmlp width
  p.depth = 4                # resmlp blocks
  p.time_embed_dim = 64      # sinusoidal time embedding size
  p.time_scale = 30.0        # t is multiplied by this before the sinusoids (fastest period
  #                            2*pi/time_scale in t). The diffusion habit of 1000 makes
  #                            v(z, t) wiggle in t: on digits RK4 then gained nothing over
  #                            Heun and dopri5 needed 469 NFE; with 30, 79 NFE (docs/results)
  p.ema_decay = 0.999        # EMA of the weights, used for sampling (0 = off)
  p.ot_coupling = False      # minibatch optimal-transport pairing of noise and data (OT-CFM)
  p.evals = ("fm_loss",)     # scheduled evaluators: fm_loss, fd_pixels, fd_classifier,
  #                            fd_inception (each every eval_every steps and at the end)
  p.eval_samples = 1000      # samples per scheduled Frechet evaluation
  p.eval_method = "heun"     # integrator of the scheduled evaluations
  p.eval_ode_steps = 25

  # Sampling: integrate dz/dt = v(z, t) from N(0, I) at t0 to t1, then decode.
  config.sample = s = ml_collections.ConfigDict()
  s.num_samples = 10000      # saved to sample/samples.npz (latents and decoded images)
  s.method = "heun"          # euler | heun | rk4 (fixed steps) | dopri5 (adaptive)
  s.num_steps = 25           # fixed-step integrators (the paper: 25-step Heun)
  s.t0 = 1e-4
  s.t1 = 1.0 - 1e-4
  s.rtol = 1e-5              # dopri5
  s.atol = 1e-5
  s.batch_size = 500         # samples integrated and decoded at once
  s.grid_size = 64           # images in sample/samples.png
  s.interp_pairs = 8         # rows of the interpolation grids
  s.interp_steps = 10        # columns
  s.compare_solvers = True   # NFE and error of each integrator vs a tight dopri5 solution

  # Evaluation: generated vs held-out data in several feature spaces (PAPERS §3).
  config.evaluate = v = ml_collections.ConfigDict()
  v.extractors = ("classifier", "pixels")   # + 'inception' with inception_weights set
  v.num_samples = 10000      # generated / reconstructed / floor samples per comparison
  v.num_reference = 10000    # held-out reference examples (at most the held-out split)
  v.pr_k = 3                 # k of the k-NN manifolds of precision/recall
  v.pr_samples = 5000        # points per set for precision/recall (pairwise cost)
  v.cache_dir = ""           # classifier cache ('' = $GPE_JAX_CACHE or ~/.cache/gpe_jax)
  v.inception_weights = ""   # local .npz of the FID Inception-v3 (docs/inception.md)
  v.classifier = classifier_config()

  # Hessian probes of the curvature bounds (PAPERS §1.6; python -m gpe_jax.experiments.probes).
  config.probes = h = ml_collections.ConfigDict()
  h.which = "abcde"        # (a) GME vs MDS curvature against beta, (b) during encoder training,
  #                          (c) decoder conditioning, (d) weak bi-Lipschitz vs Markov,
  #                          (e) negative curvature at a collapsed map
  h.encoder_checkpoint = ""  # a trained GPE encoder for (a) ('' = train one, as (b)-(d) do)
  h.points = 200           # held-out points per Hessian (the Hessian in Z is (n d) x (n d))
  h.lanczos_iters = 100    # Krylov dimension of the Lanczos runs
  h.dense_max = 2000       # below this dimension, also form the dense jax.hessian to check
  h.betas = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
  h.stop_fractions = (0.0, 0.5, 1.0)  # (c): GPE encoders stopped on the log-GME curve
  h.num_features = 256     # (c): random-feature decoder on the latents
  h.decoder_points = 1500  # (c): training points whose latents the feature Hessian uses
  h.gd_steps = 500         # (c): gradient descent on the random-feature decoder
  h.alphas = (1.05, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)   # (d)

  # Experiments (gpe_jax/experiments): variants run this many at a time, each in its own
  # process (1: one after another; more pays on CPUs for small networks, not on one GPU).
  # seeds: the seeds of experiments that repeat runs (GAN experiments); methods: the GAN
  # methods they compare (() = every registered one); variants: gan_robustness's
  # architecture variants (() = all). vae_betas: table1_beta's KL weights of the VAE (3.4 ~ the
  # authors' 0.1 D / d at D = 1024, d = 30); lrs: fig8_protocol's learning-rate grid per method;
  # gme_stop: fig8_protocol's GPE encoder stop (encoder.target_loss; the paper's MNIST 0.004).
  config.experiments = ml_collections.ConfigDict(dict(
      workers=1, seeds=(0, 1, 2, 3, 4), methods=(), variants=(),
      vae_betas=(0.1, 1.0, 3.4, 10.0, 30.0, 100.0), lrs=(3e-4, 1e-3, 3e-3), gme_stop=0.004))

  config.eval = e = ml_collections.ConfigDict()
  e.num_examples = 1000          # held-out examples per periodic evaluation (0 = all)
  e.geometry_points = 1000       # held-out points for the geometry metrics (all pairs)
  e.alphas = (1.1, 1.5, 2.0)     # weak alpha-bi-Lipschitz levels
  e.knn_k = 10
  e.latent_stats_samples = 5000  # training samples for the latent normalisation
  return config


def smoke(config, steps=4):
  """Shrink a config to a seconds-long CPU run (every stage still runs end to end)."""
  config.fast_compile = True
  for name in ("encoder", "decoder", "vae", "ae", "vae_mds", "ae_mds", "prior", *GAN_METHODS):
    s = config[name]
    s.num_steps = steps
    s.log_every = 2
    s.eval_every = steps
    s.checkpoint_every = 2
    s.progress_bar = False
  config.prior.eval_samples = 64
  config.gans.eval_samples = 64
  config.prior.eval_ode_steps = 4
  config.sample.num_samples = 64
  config.sample.num_steps = 4
  config.sample.batch_size = 32
  config.sample.grid_size = 16
  config.sample.interp_pairs = 2
  config.sample.interp_steps = 5
  config.sample.rtol = config.sample.atol = 1e-3
  config.evaluate.num_samples = 64
  config.evaluate.num_reference = 64
  config.evaluate.pr_samples = 64
  config.evaluate.classifier.num_steps = 20
  config.eval.num_examples = 64
  config.eval.geometry_points = 64
  config.eval.latent_stats_samples = 256
  config.probes.points = 24
  config.probes.lanczos_iters = 24
  config.probes.betas = (1.0, 16.0, 256.0)
  config.probes.num_features = 32
  config.probes.decoder_points = 128
  config.probes.gd_steps = 20
  config.probes.stop_fractions = (0.0, 1.0)   # one early stop (a rerun) and the final encoder
  config.probes.alphas = (1.1, 1.5, 2.0)
  config.experiments.seeds = (0,)   # a smoke run checks that an experiment runs, once
  config.experiments.vae_betas = (1.0, 30.0)
  config.experiments.lrs = (3e-3,)   # fig8_protocol: a grid of one (its test runs two)
  return config


def apply_arg(config, arg, smoke_overrides=None):
  """Handle the config argument: '' (full run) or 'smoke' (seconds-long CPU run)."""
  if arg in (None, ""):
    return config
  if arg != "smoke":
    raise ValueError(f"Unknown config argument {arg!r}: use configs/NAME.py for the full run "
                     "or configs/NAME.py:smoke for a seconds-long CPU run.")
  smoke(config)
  for key, value in (smoke_overrides or {}).items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
