r"""Default: scikit-learn's bundled 8x8 handwritten digits (1,797 real images), MLP encoder/decoder.

The embedded default: no download, finishes in a few minutes on 2 CPU cores.

    python -m gpe_jax.main --config=configs/default.py --workdir=runs/default
    python -m gpe_jax.main --config=configs/default.py:smoke --workdir=/tmp/smoke  # seconds

Data: 1,500 train / 297 held-out images, 64-D, latent_dim 10, batch 100.
Expected (2-core CPU): see README "Measured results"; the decoder's held-out MSE is an order of
magnitude below the mean-image MSE, and >= 90% of held-out pairs are weakly 1.5-bi-Lipschitz.
"""
from configs import base


def get_config(arg=None):
  config = base.get_config()
  config.data.name = "digits"
  config.data.num_held_out = 297
  config.data.batch_size = 100
  config.model.kind = "mlp"
  config.model.latent_dim = 10
  config.model.enc_hidden = (256, 256)
  config.model.dec_hidden = (256, 256)
  config.encoder.update(
      lr_schedule="cosine", num_steps=4000, lr=1e-3, log_every=100, eval_every=500,
      checkpoint_every=1000)
  config.decoder.update(
      lr_schedule="cosine", num_steps=3000, lr=1e-3, log_every=100, eval_every=500,
      checkpoint_every=1000)
  for name in ("vae", "ae", "vae_mds", "ae_mds"):  # baselines: the GPE stages' schedule
    config[name].update(lr_schedule="cosine", num_steps=4000, lr=1e-3, log_every=100,
                        eval_every=500, checkpoint_every=1000)
  config.prior.update(
      num_steps=10000, lr=1e-3, log_every=200, eval_every=2500, checkpoint_every=2500,
      evals=("fm_loss", "fd_classifier"), eval_samples=1500)
  config.sample.num_samples = 5000
  config.evaluate.num_samples = 1500   # = all 1,500 training images (floor, recon)
  config.eval.num_examples = 0
  return base.apply_arg(config, arg, {"data.batch_size": 32})
