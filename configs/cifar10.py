r"""CIFAR-10, 3x32x32 (PAPERS §1.8: latent 100, batch 100, encoder stopped at GME 1.5e-3).

Offline source: a prepared tensorflow-datasets `cifar10` (run `tfds build cifar10` where there is
internet, copy ~/tensorflow_datasets/cifar10, or set --config.data.tfds_data_dir), or an .npz
(--config.data.source=npz --config.data.path=cifar10.npz with x_train/x_test uint8 NHWC).

    python -m gpe_jax.main --config=configs/cifar10.py --workdir=runs/cifar10

Hardware: one GPU. Expected: the encoder stops at the held-out GME threshold 1.5e-3.
"""
from configs import base


def get_config(arg=None):
  config = base.get_config()
  config.data.name = "cifar10"
  config.data.batch_size = 100
  config.model.kind = "conv"
  config.model.latent_dim = 100
  config.model.enc_features = (64, 128, 256)
  config.model.dec_features = (256, 128, 64)
  config.model.extra_convs = 1
  config.encoder.update(num_steps=200000, lr=1e-4, target_loss=1.5e-3, eval_every=2000,
                        checkpoint_every=2000)
  config.decoder.update(num_steps=200000, lr=1e-4, eval_every=2000, checkpoint_every=2000)
  return base.apply_arg(config, arg, {"data.batch_size": 32, "data.max_train": 512,
                                      "data.max_test": 128})
