"""The design card's command on CelebA-shaped data made offline: every stage runs to the end on
unlabelled images (label-free evaluation by default), and the trained model loads without the
data."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli


def image_folder(path, n, height, width, seed=0):
  """``n`` JPEGs of ``height`` x ``width`` named like CelebA's aligned images (000001.jpg)."""
  os.makedirs(path)
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
  for i in range(n):
    centre = rng.uniform(0.3, 0.7, 2)
    blob = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / 0.05)
    rgb = np.stack([blob * rng.uniform(0.5, 1.0) for _ in range(3)], -1)
    Image.fromarray((255 * rgb).astype(np.uint8)).save(os.path.join(path, f"{i + 1:06d}.jpg"))
  return path


@pytest.mark.parametrize("config,n,size", [("celeba", 40, (218, 178)),
                                           ("celeba_hq", 24, (256, 256))])
def test_celeba_configs_run_every_stage_and_load_without_data(tmp_path, config, n, size):
  data = image_folder(str(tmp_path / "img_align_celeba"), n, *size)
  wd = str(tmp_path / "wd")
  res = run_cli(f"--config=configs/{config}.py:smoke", f"--workdir={wd}",
                "--config.data.source=image_folder", f"--config.data.path={data}", timeout=900)
  assert res.returncode == 0, res.stderr[-3000:]
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert set(summary) == {"encoder", "decoder", "prior", "sample", "evaluate"}
  ev = summary["evaluate"]
  assert np.isfinite(ev["fd_thumbnail_prior"]) and "fd_classifier_prior" not in ev
  assert ev["protocol"]["extractors"]["thumbnail"]["dim"] == 16 * 16 * 3
  shutil.rmtree(data)   # the trained model is used without its training data
  import gpe_jax
  model = gpe_jax.load(wd)
  side = 64 if config == "celeba" else 256
  x = model.sample(2, seed=0)
  assert x.shape == (2, side, side, 3) and np.all(np.isfinite(x))
  z = model.encode(x)
  assert z.shape == (2, 100) and model.reconstruct(x).shape == x.shape
