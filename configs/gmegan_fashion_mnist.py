r"""GMEGAN (and the GAN baselines) on Fashion-MNIST (real, 60k/10k), 1x32x32, conv families.

Offline source: the Debian package `dataset-fashion-mnist` (found automatically), or IDX files
under --config.data.path.

    python -m gpe_jax.main --config=configs/gmegan_fashion_mnist.py --workdir=runs/gmegan_fm
    python -m gpe_jax.main --config=configs/gmegan_fashion_mnist.py --workdir=runs/wgan_gp_fm \
        --config.method=wgan_gp --config.stages="('wgan_gp','sample','evaluate')"

Settings: the paper's CIFAR-10 regularisation (c_T = 10, c_G = 1, c_R = 0.5, k = 1, p = 2),
batch 64, Adam (0.5, 0.999); a larger learning rate than the paper's 1e-5 (2e-4 for T and psi,
4e-4 for G, the paper's 1:2 ratio) and 10,000 iterations so that a run fits a CPU session.
The evaluate stage reports the classifier and pixel Fréchet distances, precision/recall and
``class_rel_std_prior``, the paper's mode-collapse measure (relative std of class counts).

Hardware: a GPU, or a 2-core CPU at about 0.4 s per iteration (about an hour). Expected
result: not yet measured at this length; docs/results/experiments/gan_robustness has the
GAN comparison measured on the CPU (digits).
"""
from configs import base


def get_config(arg=None):
  config = base.get_config()
  config.method = "gmegan"
  config.stages = ("gmegan", "sample", "evaluate")
  config.data.name = "fashion_mnist"
  config.data.image_size = 32
  config.data.batch_size = 64
  config.model.kind = "conv"
  config.model.latent_dim = 32
  config.model.enc_features = (32, 64, 128)
  config.model.dec_features = (128, 64, 32)
  config.gans.critic_features = (32, 64, 128)
  config.gans.critic_hidden = ()
  for name in base.GAN_METHODS:
    config[name].update(num_steps=10000, log_every=100, eval_every=2000,
                        checkpoint_every=1000, evals=("fd_pixels",))
  config.gmegan.update(c_T=10.0, c_G=1.0, c_R=0.5, k=1.0, p=2.0)
  for net, lr in (("T", 2e-4), ("psi", 2e-4), ("G", 4e-4), ("f", 4e-4)):
    config.gmegan[net].lr = lr
  config.gans.eval_samples = 2000
  config.sample.num_samples = 10000
  config.evaluate.num_samples = 10000
  config.evaluate.num_reference = 10000
  return base.apply_arg(config, arg, {"data.batch_size": 16, "data.max_train": 256,
                                      "data.max_test": 64,
                                      "model.enc_features": (8, 16),
                                      "model.dec_features": (16, 8),
                                      "gans.critic_features": (8, 16)})
