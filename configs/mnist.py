r"""MNIST, resized to 1x32x32 (PAPERS §1.8: latent 30, batch 100, encoder stopped at GME 3.5e-3).

Offline sources: IDX files (train-images-idx3-ubyte[.gz], ...) in --config.data.path,
~/.cache/gpe_jax/mnist or ./data/mnist; or a prepared tensorflow-datasets `mnist` in
~/tensorflow_datasets (--config.data.tfds_data_dir).

    python -m gpe_jax.main --config=configs/mnist.py --workdir=runs/mnist

Hardware: one GPU (a CPU works, slowly). Expected: the encoder reaches the paper's held-out GME
threshold 3.5e-3 (target_loss) and stops; the decoder then reconstructs held-out digits.
"""
from configs import base


def get_config(arg=None):
  config = base.get_config()
  config.data.name = "mnist"
  config.data.image_size = 32
  config.data.batch_size = 100
  config.model.kind = "conv"
  config.model.latent_dim = 30
  config.model.enc_features = (32, 64, 128)
  config.model.dec_features = (128, 64, 32)
  config.encoder.update(num_steps=50000, lr=1e-3, target_loss=3.5e-3, eval_every=1000,
                        checkpoint_every=1000)
  config.decoder.update(num_steps=50000, lr=1e-4, eval_every=1000, checkpoint_every=1000)
  return base.apply_arg(config, arg, {"data.batch_size": 32, "data.max_train": 512,
                                      "data.max_test": 128})
