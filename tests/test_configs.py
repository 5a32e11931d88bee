"""Every config parses, its smoke variant shrinks it, and its model builds for its data shape."""
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from gpe_jax import models

CONFIGS = ["default", "fashion_mnist", "mnist", "cifar10", "celeba", "celeba_hq", "mixture"]
SHAPES = {"default": (8, 8, 1), "fashion_mnist": (32, 32, 1), "mnist": (32, 32, 1),
          "cifar10": (32, 32, 3), "celeba": (64, 64, 3), "celeba_hq": (256, 256, 3),
          "mixture": (500,)}
PAPER = {  # PAPERS §1.8: (latent, batch, encoder GME threshold)
    "mnist": (30, 100, 3.5e-3), "cifar10": (100, 100, 1.5e-3), "celeba": (100, 100, 5e-4),
    "celeba_hq": (100, 50, 8e-4)}


def load(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_and_smoke(name):
  full, smoke = load(name), load(name, "smoke")
  for c in (full, smoke):
    assert tuple(c.stages) == ("encoder", "decoder", "prior", "sample", "evaluate")
    for key in ("seed", "data.name", "data.path", "data.batch_size", "model.latent_dim",
                "encoder.num_steps", "encoder.lr", "decoder.num_steps", "decoder.lr"):
      node = c
      for part in key.split("."):
        assert part in node, (name, key)
        node = node[part]
      assert node is not None, (name, key)
    assert c.data.batch_size >= 1 and c.model.latent_dim >= 1
    assert c.encoder.num_steps >= 1 and c.decoder.num_steps >= 1 and c.encoder.lr > 0
  assert smoke.encoder.num_steps < full.encoder.num_steps
  assert smoke.data.batch_size <= full.data.batch_size
  assert smoke.data.batch_size % 8 == 0  # smoke runs also fit 8 fake devices
  if name in PAPER:
    latent, batch, threshold = PAPER[name]
    assert (full.model.latent_dim, full.data.batch_size, full.encoder.target_loss) == (
        latent, batch, threshold)
  assert full.encoder.b1 == 0.5 and full.encoder.b2 == 0.999


@pytest.mark.parametrize("name", CONFIGS)
def test_config_models_fit_their_data(name):
  cfg = load(name, "smoke")
  shape = SHAPES[name]
  enc = models.build_encoder(cfg.model, shape)
  dec = models.build_decoder(cfg.model, shape)
  x = jax.ShapeDtypeStruct((2,) + shape, jnp.float32)
  z = jax.eval_shape(lambda x: enc.init_with_output(jax.random.key(0), x)[0], x)
  assert z.shape == (2, cfg.model.latent_dim)
  out = jax.eval_shape(lambda z: dec.init_with_output(jax.random.key(0), z)[0], z)
  assert out.shape == (2,) + shape


def test_unknown_config_argument_is_an_error():
  with pytest.raises(ValueError, match="smoke"):
    load("default", "smkoe")


def test_config_files_document_their_command():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for name in CONFIGS:
    doc = importlib.import_module(f"configs.{name}").__doc__
    assert f"--config=configs/{name}.py" in doc, name
    assert os.path.exists(os.path.join(root, "configs", f"{name}.py"))


GAN_CONFIGS = {"gmegan_mixture": (100,), "gmegan_fashion_mnist": (32, 32, 1),
               "gmegan_cifar10": (32, 32, 3)}


@pytest.mark.parametrize("name", sorted(GAN_CONFIGS))
def test_gan_configs_smoke_and_networks(name):
  from gpe_jax.stages import gans
  full, smoke = load(name), load(name, "smoke")
  for c in (full, smoke):
    assert c.method == "gmegan" and tuple(c.stages) == ("gmegan", "sample", "evaluate")
    shape = GAN_CONFIGS[name]
    for method in gans.NAMES:
      mods, _ = gans.build(c, method, shape)
      state = jax.eval_shape(gans.make_init_fn(method, mods, gans.build(c, method, shape)[1],
                                               shape, int(c.model.latent_dim)),
                             jax.random.key(0))
      assert set(state.params) == set(gans.nets_of(method, c[method]))
  assert smoke.gmegan.num_steps < full.gmegan.num_steps
  assert smoke.data.batch_size % 8 == 0
  if name == "gmegan_cifar10":   # PAPERS §2, the paper's CIFAR-10 settings
    g = full.gmegan
    assert (g.c_T, g.c_G, g.c_R, g.k, g.p, full.data.batch_size) == (10, 1, 0.5, 1, 2, 64)
    assert (g.T.lr, g.psi.lr, g.G.lr, g.G.b1, g.G.b2) == (1e-5, 1e-5, 2e-5, 0.5, 0.999)
  if name == "gmegan_mixture":   # the authors' mixture: 12 modes; ':9' the 9-mode variant
    assert full.data.mixture.num_components == 12 and full.data.batch_size == 16
    nine = load(name, "9")
    assert nine.data.mixture.num_components == 9 and nine.gmegan.num_steps == 20000
    assert load(name, "9:smoke").data.mixture.num_components == 9
