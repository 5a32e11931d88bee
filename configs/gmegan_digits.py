r"""GMEGAN (and the GAN baselines) on scikit-learn's bundled 8x8 digits (1,500 train / 297
held-out real images, no download), conv families sized for 8x8 (two levels: 8 -> 4 -> 2).

The embedded image setting of the GAN comparisons (``gpe_jax.experiments.gan_robustness``,
the paper's Figs. 6-7): small enough that one method-run trains, samples and is evaluated in
about a minute on a 2-core CPU.

    python -m gpe_jax.main --config=configs/gmegan_digits.py --workdir=runs/gmegan_digits
    python -m gpe_jax.main --config=configs/gmegan_digits.py --workdir=runs/wgan_gp_digits \
        --config.method=wgan_gp --config.stages="('wgan_gp','sample','evaluate')"
    python -m gpe_jax.experiments.gan_robustness --config=configs/gmegan_digits.py \
        --workdir=runs/gan_robustness
    python -m gpe_jax.main --config=configs/gmegan_digits.py:smoke --workdir=/tmp/smoke

Arguments: '' (2,000 iterations per method), 'N' (N iterations for every GAN method, e.g.
``configs/gmegan_digits.py:1000``), 'smoke' (4 iterations, tiny networks; it also narrows
``gan_robustness`` to GMEGAN and the GAN on the ``conv_bn`` and ``mlp`` architectures, 4 runs
instead of 63, so that experiment's smoke run stays seconds-long: add
``--config.experiments.methods="()" --config.experiments.variants="()"`` for all of them).

Settings: the paper's CIFAR-10 regularisation for GMEGAN (c_T = 10, c_G = 1, c_R = 0.5, k = 1,
p = 2), batch 64, Adam (0.5, 0.999); the baselines keep their published optimisers and critic
updates (configs/base.py). Learning rates are larger than the paper's 1e-5 (GMEGAN: 2e-4 for T
and psi, 4e-4 for G and f, the paper's 1:2 ratio) so that 2,000 iterations (85 epochs)
suffice. Latent dimension 10. The evaluate stage reports the classifier and pixel Fréchet
distances against the 297 held-out images, precision/recall and ``class_rel_std_prior`` (the
paper's mode-collapse measure: relative std of the classifier's class counts over the
samples).

Hardware: a 2-core CPU; cost per method in the module docstring of
``gpe_jax/experiments/gan_robustness.py`` (measured there). Expected result: see the report of
that experiment; no result of the paper is on this dataset.
"""
from configs import base

NUM_STEPS = 2000


def get_config(arg=None):
  arg = arg or ""
  first, _, rest = arg.partition(":")
  steps, arg = (int(first), rest) if first.isdigit() else (NUM_STEPS, arg)
  config = base.get_config()
  config.method = "gmegan"
  config.stages = ("gmegan", "sample", "evaluate")
  config.data.name = "digits"
  config.data.num_held_out = 297
  config.data.batch_size = 64
  config.model.kind = "conv"
  config.model.latent_dim = 10
  config.model.enc_features = (8, 16)
  config.model.dec_features = (16, 8)
  config.model.enc_hidden = (256, 256)   # used by the 'mlp' architecture variants
  config.model.dec_hidden = (256, 256)
  config.model.batch_norm = True
  config.gans.critic_features = (8, 16)
  config.gans.critic_hidden = ()
  config.gans.eval_samples = 1000
  for name in base.GAN_METHODS:
    config[name].update(num_steps=steps, log_every=100, eval_every=1000,
                        checkpoint_every=1000, evals=())
  config.gmegan.update(c_T=10.0, c_G=1.0, c_R=0.5, k=1.0, p=2.0)
  for net, lr in (("T", 2e-4), ("psi", 2e-4), ("G", 4e-4), ("f", 4e-4)):
    config.gmegan[net].lr = lr
  config.sample.num_samples = 1500
  config.sample.grid_size = 64
  config.sample.compare_solvers = False
  config.evaluate.extractors = ("classifier", "pixels")
  config.evaluate.num_samples = 1500   # = all 1,500 training images (floor)
  config.evaluate.num_reference = 297  # = the whole held-out split
  config.evaluate.pr_samples = 1500
  config.eval.num_examples = 0
  config.eval.geometry_points = 297
  return base.apply_arg(config, arg or None, {"data.batch_size": 16,
                                      "model.enc_features": (4, 8),
                                      "model.dec_features": (8, 4),
                                      "model.enc_hidden": (32,),
                                      "model.dec_hidden": (32,),
                                      "gans.critic_features": (4, 8),
                                      "gans.inverse_hidden": (16, 16),
                                      "gans.pair_hidden": (16,),
                                      "experiments.methods": ("gmegan", "gan"),
                                      "experiments.variants": ("conv_bn", "mlp")})
