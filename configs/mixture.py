r"""The GPE paper's Fig. 3 data: a Gaussian mixture in 500-D (large variance in the first two
coordinates, tiny elsewhere), embedded in 2-D by a 4-layer fully connected encoder.

    python -m gpe_jax.main --config=configs/mixture.py --workdir=runs/mixture

Hardware: a 2-core CPU, about a minute. Expected: encoder/latent_scatter.png shows the
components laid out as in the data's first two coordinates (a ring of clusters), not squeezed
into one Gaussian blob; the weak 1.5-bi-Lipschitz fraction is high.
"""
from configs import base


def get_config(arg=None):
  config = base.get_config()
  config.data.name = "mixture"
  config.data.batch_size = 100
  config.model.kind = "mlp"
  config.model.latent_dim = 2
  config.model.enc_hidden = (256, 256, 256)
  config.model.dec_hidden = (256, 256, 256)
  config.encoder.update(
      lr_schedule="cosine", num_steps=3000, lr=1e-3, log_every=100, eval_every=500,
      checkpoint_every=1000)
  config.decoder.update(
      lr_schedule="cosine", num_steps=3000, lr=1e-3, log_every=100, eval_every=500,
      checkpoint_every=1000)
  return base.apply_arg(config, arg, {"data.batch_size": 32, "data.mixture.num_train": 512,
                                      "data.mixture.num_test": 128})
