r"""CelebA-HQ at 3x256x256 (PAPERS §1.8: latent 100, batch 50, encoder stopped at GME 8e-4).

Offline sources: a prepared tensorflow-datasets `celeb_a_hq/256` (it must be prepared manually,
see the tfds catalog), or a folder of images (--config.data.source=image_folder
--config.data.path=DIR).

    python -m gpe_jax.main --config=configs/celeba_hq.py --workdir=runs/celeba_hq

Hardware: GPUs (batch 50: use a batch the device count divides). Expected: the encoder stops at
held-out GME 8e-4; then the decoder trains.
"""
from configs import base


def get_config(arg=None):
  config = base.get_config()
  config.data.name = "celeb_a_hq"
  config.data.image_size = 256
  config.data.num_held_out = 3000
  config.data.batch_size = 50
  config.model.kind = "conv"
  config.model.latent_dim = 100
  config.model.enc_features = (32, 64, 128, 256, 512, 512)
  config.model.dec_features = (512, 512, 256, 128, 64, 32)
  config.encoder.update(num_steps=300000, lr=1e-4, target_loss=8e-4, eval_every=2000,
                        checkpoint_every=2000)
  config.decoder.update(num_steps=300000, lr=1e-4, eval_every=2000, checkpoint_every=2000)
  # No labels here (attributes are not classes): measure generation in label-free feature
  # spaces: 16 x 16 thumbnails (raw 64 x 64 x 3 pixels would be a 12,288-D Frechet distance);
  # add 'inception' with --config.evaluate.inception_weights (docs/inception.md).
  config.evaluate.extractors = ("thumbnail",)
  return base.apply_arg(config, arg, {"data.num_held_out": 8, "data.batch_size": 8,
                                      "data.max_train": 64, "data.max_test": 16,
                                      "model.enc_features": (4, 8, 8, 16, 16, 32),
                                      "model.dec_features": (32, 16, 16, 8, 8, 4)})
