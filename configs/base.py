"""Base config: every section and field, with defaults. Dataset configs override what differs.

Sections: data, model, encoder, decoder (one per stage: num_steps, lr, betas, ...), eval.
Stage sections share one shape, made by ``stage_config``.
"""
import ml_collections

from gpe_jax.data import default_data_config


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


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.stages = ("encoder", "decoder")
  config.num_devices = 0   # 0 = all visible devices; the batch is sharded over them

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

  config.encoder = stage_config(num_steps=2000, lr=1e-4)
  config.decoder = stage_config(num_steps=2000, lr=1e-4)
  config.decoder.encoder_checkpoint = ""  # '' = workdir/encoder/checkpoints
  config.decoder.l1_weight = 0.0          # optional extra L1 term (off: PAPERS §1.3)

  config.eval = e = ml_collections.ConfigDict()
  e.num_examples = 1000          # held-out examples per periodic evaluation (0 = all)
  e.geometry_points = 1000       # held-out points for the geometry metrics (all pairs)
  e.alphas = (1.1, 1.5, 2.0)     # weak alpha-bi-Lipschitz levels
  e.knn_k = 10
  e.latent_stats_samples = 5000  # training samples for the latent normalisation
  return config


def smoke(config, steps=4):
  """Shrink a config to a seconds-long CPU run (every stage still runs end to end)."""
  for name in ("encoder", "decoder"):
    s = config[name]
    s.num_steps = steps
    s.log_every = 2
    s.eval_every = steps
    s.checkpoint_every = 2
    s.progress_bar = False
  config.eval.num_examples = 64
  config.eval.geometry_points = 64
  config.eval.latent_stats_samples = 256
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
