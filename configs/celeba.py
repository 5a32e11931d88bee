r"""CelebA, centre-cropped (140 px) and resized to 3x64x64 (PAPERS §1.8: latent 100, batch 100,
encoder stopped at GME 5e-4).

Offline sources: a prepared tensorflow-datasets `celeb_a` (~/tensorflow_datasets or
--config.data.tfds_data_dir), or a folder of aligned images:
--config.data.source=image_folder --config.data.path=/data/img_align_celeba.

    python -m gpe_jax.main --config=configs/celeba.py --workdir=runs/celeba

Hardware: one or more GPUs (the batch is sharded over all visible devices; on 8 devices use
a batch that 8 divides, e.g. --config.data.batch_size=104). Expected: the encoder stops at
held-out GME 5e-4; then the decoder trains.
"""
from configs import base


def get_config(arg=None):
  config = base.get_config()
  config.data.name = "celeb_a"
  config.data.center_crop = 140
  config.data.image_size = 64
  config.data.num_held_out = 10000
  config.data.batch_size = 100
  config.model.kind = "conv"
  config.model.latent_dim = 100
  config.model.enc_features = (64, 128, 256, 512)
  config.model.dec_features = (512, 256, 128, 64)
  config.model.extra_convs = 1
  config.encoder.update(num_steps=300000, lr=1e-4, target_loss=5e-4, eval_every=2000,
                        checkpoint_every=2000)
  config.decoder.update(num_steps=300000, lr=1e-4, eval_every=2000, checkpoint_every=2000)
  # No labels here (attributes are not classes): measure generation in label-free feature
  # spaces: 16 x 16 thumbnails (raw 64 x 64 x 3 pixels would be a 12,288-D Frechet distance);
  # add 'inception' with --config.evaluate.inception_weights (docs/inception.md).
  config.evaluate.extractors = ("thumbnail",)
  return base.apply_arg(config, arg, {"data.num_held_out": 16, "data.batch_size": 16,
                                      "data.max_train": 256, "data.max_test": 64,
                                      "model.enc_features": (8, 16, 16, 32),
                                      "model.dec_features": (32, 16, 16, 8)})
