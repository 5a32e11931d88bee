r"""Your own images: any folder of .png/.jpg/.jpeg files, unlabelled, trained end to end.

    python -m gpe_jax.main --config=configs/folder.py --config.data.path=DIR --workdir=runs/mine
    python -m gpe_jax.main --config=configs/folder.py:smoke --config.data.path=DIR --workdir=W

Images are found recursively, centre-cropped to a square and resized to 32x32 (RGB, or one
channel when every image is greyscale; `--config.data.image_size=64` for more detail, slower).
The hold-out is sized to the data (10% of the images, at most 10,000) and the evaluation needs
no labels: Frechet distance and precision/recall in pixel space (add 'inception' to
`evaluate.extractors` with local Inception weights, docs/inception.md). Large folders are
decoded per batch (`config.data.storage`), never held as float32. The conv nets and schedule
are those of `configs/fashion_mnist.py`, sized for a 2-core CPU: about 3,000 encoder and decoder
steps each (a few minutes per 1,000 steps at 32x32 on 2 cores); on a GPU raise num_steps.
`:smoke` runs every stage for 4 steps (tens of seconds).
"""
from configs import base, fashion_mnist


def get_config(arg=None):
  config = fashion_mnist.get_config()
  config.data.name = "image_folder"
  config.data.source = "auto"
  config.data.image_size = 32
  config.data.center_crop = -1
  config.data.num_held_out = -1          # 10% of the images (at least a batch, at most 10,000)
  config.prior.evals = ("fm_loss", "fd_pixels")
  config.evaluate.extractors = ("pixels",)
  config.sample.num_samples = 5000
  config.evaluate.num_samples = 5000
  config.evaluate.num_reference = 5000
  return base.apply_arg(config, arg, {"data.batch_size": 32, "data.max_train": 512,
                                      "data.max_test": 128})
