r"""GMEGAN on CIFAR-10 with the paper's settings (PAPERS §2): c_T = 10, c_G = 1, c_R = 0.5,
k = 1, p = 2, batch 64, Adam (0.5, 0.999), lr 1e-5 for T and psi and 2e-5 for G (and f), latent
dimension 300 (the authors' code), 300 epochs.

Offline source: a prepared tensorflow-datasets `cifar10` (run `tfds build cifar10` where there is
internet and copy ~/tensorflow_datasets/cifar10, or set --config.data.tfds_data_dir), or an .npz
(--config.data.source=npz --config.data.path=cifar10.npz with x_train/x_test uint8 NHWC).

    python -m gpe_jax.main --config=configs/gmegan_cifar10.py --workdir=runs/gmegan_cifar10

Hardware: one GPU (300 epochs = 234,000 iterations). The paper reports FID (Inception) of the
5 best of epochs 250-300 on 5,000 samples; here add --config.evaluate.inception_weights=FILE
(docs/inception.md) for "FID" proper. Expected result: not measured here (no GPU run yet); the
paper reports GMEGAN with the lowest FID and class relative std among its baselines.
"""
from configs import base


def get_config(arg=None):
  config = base.get_config()
  config.method = "gmegan"
  config.stages = ("gmegan", "sample", "evaluate")
  config.data.name = "cifar10"
  config.data.batch_size = 64
  config.model.kind = "conv"
  config.model.latent_dim = 300
  config.model.enc_features = (64, 128, 256)
  config.model.dec_features = (256, 128, 64)
  config.gans.critic_features = (64, 128, 256)
  config.gans.critic_hidden = ()
  for name in base.GAN_METHODS:
    config[name].update(num_steps=234000, log_every=200, eval_every=5000,
                        checkpoint_every=5000, evals=("fd_classifier",))
  config.gmegan.update(c_T=10.0, c_G=1.0, c_R=0.5, k=1.0, p=2.0)
  for net, lr in (("T", 1e-5), ("psi", 1e-5), ("G", 2e-5), ("f", 2e-5)):
    config.gmegan[net].lr = lr
  config.gans.eval_samples = 5000
  config.sample.num_samples = 10000
  config.evaluate.num_samples = 10000
  config.evaluate.num_reference = 10000
  return base.apply_arg(config, arg, {"data.batch_size": 16, "data.max_train": 256,
                                      "data.max_test": 64, "model.latent_dim": 16,
                                      "model.enc_features": (8, 16, 16),
                                      "model.dec_features": (16, 16, 8),
                                      "gans.critic_features": (8, 16, 16)})
