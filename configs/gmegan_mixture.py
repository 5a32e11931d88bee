r"""The GMEGAN paper's synthetic mixture (PAPERS §2, Fig. 5): 12 equal-weight Gaussians in 100-D,
an inner ring of 4 and an outer ring of 8 in the first two coordinates, generated from a 2-D
latent by 3-layer 128-wide MLPs (the authors' comparison script's networks and settings:
batch 16, lr 1e-3, Adam (0.5, 0.999)), with one change applied to every method alike: the
learning rates decay to 1% on a cosine over the 20,000 iterations (measured for GMEGAN, seed
0: 0.94 of samples within 3 sigma at the end, against 0.91 at constant lr, whose runs also
drop modes transiently: 10 of 12 at one checkpoint of one run).

    python -m gpe_jax.main --config=configs/gmegan_mixture.py --workdir=runs/gmegan_mixture
    python -m gpe_jax.main --config=configs/gmegan_mixture.py --workdir=runs/wgan_gp_mixture \
        --config.method=wgan_gp --config.stages="('wgan_gp','sample','evaluate')"
    python -m gpe_jax.main --config=configs/gmegan_mixture.py:9 ...   # the 9-mode variant
    python -m gpe_jax.experiments.gan_mixture --config=configs/gmegan_mixture.py --workdir=...

Hardware: a 2-core CPU, a few minutes per method (20,000 iterations). Expected for GMEGAN:
``summary.json`` gmegan.modes_covered 12 of 12 at every scheduled evaluation (every 2,000
iterations, metrics.jsonl), high_quality >= 0.9, modes balanced (min_share / max_share near
1/12); gmegan/samples.png shows both rings filled. Measured numbers: README "GANs" and
docs/results/experiments/gan_mixture.

Arguments: '' (12 modes), '9' (the paper's 9-mode variant: 3 inner, 6 outer), 'smoke', '9:smoke'.
The smoke config also narrows ``gan_mixture``'s methods to GMEGAN (a method with an encoder) and
WGAN-GP (one without), so that experiment's smoke run stays seconds-long; add
``--config.experiments.methods="()"`` for all seven.
"""
from configs import base

SIGMA = 0.15


def get_config(arg=None):
  arg = arg or ""
  modes_arg, _, rest = arg.partition(":") if arg.split(":")[0] in ("9", "12") else ("", "", arg)
  config = base.get_config()
  config.method = "gmegan"
  config.stages = ("gmegan", "sample", "evaluate")
  config.data.name = "mixture"
  config.data.batch_size = 16
  m = config.data.mixture
  m.layout = "rings"
  m.num_components = int(modes_arg or 12)
  m.dim = 100
  m.radius = 1.1 * SIGMA          # r: rings at 3r and 9r
  m.shift = 0.5
  m.std_major = SIGMA
  m.std_minor = 0.1 * SIGMA
  m.num_train = 10000
  m.num_test = 2000
  config.model.kind = "mlp"
  config.model.latent_dim = 2
  config.model.enc_hidden = (128, 128, 128)
  config.model.dec_hidden = (128, 128, 128)
  config.gans.critic_hidden = (128, 128, 128)
  config.gans.eval_samples = 2000
  for name in base.GAN_METHODS:
    sec = config[name]
    sec.update(num_steps=20000, log_every=500, eval_every=2000, checkpoint_every=5000,
               evals=("modes",), lr_schedule="cosine")
    for net in ("G", "T", "psi", "f"):
      if net in sec:
        sec[net].update(lr=1e-3, b1=0.5, b2=0.999, optimizer="adam")
  # The authors' settings per method (their comparison script): critic updates per iteration
  # and penalty weights. GMEGAN: k/2 = 5 on |grad psi|^6 at real and fake points, c_T = 10,
  # c_R = c_G = 0.5.
  config.gmegan.update(k=10.0, p=6.0, c_T=10.0, c_R=0.5, c_G=0.5, n_critic=1)
  config.wgan.update(n_critic=3)
  config.wgan.psi.optimizer = config.wgan.G.optimizer = "rmsprop"
  config.wgan_gp.update(n_critic=2, gp_weight=10.0)
  config.wgan_div.update(n_critic=2, k=2.0, p=6.0)
  config.vaegan.update(gamma=5.0)
  config.sample.num_samples = 2000
  config.sample.compare_solvers = False
  config.evaluate.extractors = ("pixels",)
  config.evaluate.num_samples = 2000
  config.evaluate.num_reference = 2000
  config.evaluate.pr_samples = 2000
  config.eval.geometry_points = 1000
  return base.apply_arg(config, rest or None, {"data.mixture.num_train": 512,
                                               "data.mixture.num_test": 128,
                                               "experiments.methods": ("gmegan", "wgan_gp")})
