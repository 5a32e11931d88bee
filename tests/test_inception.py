"""FID Inception-v3 (gpe_jax.evals.inception): shapes, weight conversion, errors, preprocessing.

All with random weights (the real FID weights are not available offline). The agreement with
pytorch-fid itself is measured by ``benchmarks/inception_agreement.py`` (needs torch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpe_jax.evals import inception
from gpe_jax.parallel import ConfigError

# The inverse of convert_state_dict's mapping, written independently: Flax leaf -> torch suffix.
_LEAF_TO_TORCH = {
    ("params", "conv", "kernel"): "conv.weight",
    ("params", "bn", "scale"): "bn.weight",
    ("params", "bn", "bias"): "bn.bias",
    ("batch_stats", "bn", "mean"): "bn.running_mean",
    ("batch_stats", "bn", "var"): "bn.running_var",
}
# pytorch-fid's InceptionV3 wraps the layers in blocks.<i>.<j>.
_FID_BLOCKS = {
    "Conv2d_1a_3x3": "blocks.0.0", "Conv2d_2a_3x3": "blocks.0.1", "Conv2d_2b_3x3": "blocks.0.2",
    "Conv2d_3b_1x1": "blocks.1.0", "Conv2d_4a_3x3": "blocks.1.1",
    **{f"Mixed_{n}": f"blocks.2.{i}" for i, n in enumerate(["5b", "5c", "5d", "6a", "6b", "6c",
                                                            "6d", "6e"])},
    **{f"Mixed_{n}": f"blocks.3.{i}" for i, n in enumerate(["7a", "7b", "7c"])},
}


def _random_variables(seed: int = 0) -> dict:
  """Random Flax variables with the model's shapes; He-scaled kernels, non-trivial BN stats."""
  rng = np.random.default_rng(seed)
  shapes = inception.variable_shapes()

  def leaf(path, s):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return (rng.normal(size=s.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, size=s.shape).astype(np.float32)
    return (0.1 * rng.normal(size=s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _to_torch_state_dict(variables: dict, blocks_prefix: bool = False) -> dict[str, np.ndarray]:
  """Flax variables -> torch-named state dict (OIHW kernels), as the .pth file would hold."""
  out = {}
  for collection, tree in variables.items():
    for key_path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
      path = [k.key for k in key_path]
      layer = path[:-2]
      if blocks_prefix:
        layer = [_FID_BLOCKS[layer[0]]] + layer[1:]
      name = ".".join(layer + [_LEAF_TO_TORCH[(collection, path[-2], path[-1])]])
      value = np.asarray(value)
      out[name] = value.transpose(3, 2, 0, 1) if path[-1] == "kernel" else value
  return out


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _torch_bilinear_1d(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] interpolation matrix of torch's F.interpolate(bilinear, align_corners=False)."""
  m = np.zeros((n_out, n_in))
  scale = n_in / n_out
  for i in range(n_out):
    src = max((i + 0.5) * scale - 0.5, 0.0)
    i0 = min(int(np.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    lam = src - i0
    m[i, i0] += 1.0 - lam
    m[i, i1] += lam
  return m


@pytest.fixture(scope="module")
def variables():
  return _random_variables(0)


@pytest.fixture(scope="module")
def features_fn(variables):
  return inception.make_feature_fn(variables, batch_size=2)


def test_variable_shapes_and_abstract_output():
  shapes = inception.variable_shapes()
  assert set(shapes) == {"params", "batch_stats"}
  kernels = [l for p, l in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
             if p[-1].key == "kernel"]
  assert len(kernels) == 94  # the 94 BasicConv2d layers of Inception-v3 without aux/fc
  n_params = sum(int(np.prod(l.shape)) for l in jax.tree_util.tree_leaves(shapes["params"]))
  # torchvision's 27,161,264 minus AuxLogits (3,326,696 at 1000 classes) and fc (2,049,000).
  assert n_params == 21_785_568
  x = jax.ShapeDtypeStruct((5, 299, 299, 3), jnp.float32)
  out = jax.eval_shape(inception.InceptionV3().apply, shapes, x)
  assert out.shape == (5, inception.FEATURE_DIM) and out.dtype == jnp.float32


def test_flax_init_block_and_forward_shape(variables):
  """Flax init of one block (a full ``model.init`` spends ~35 s compiling its 94 RNG draws on
  CPU, so the full model runs on random weights shaped by ``jax.eval_shape`` instead)."""
  block = inception.InceptionE("max")
  x8 = jnp.zeros((2, 8, 8, 2048))
  block_vars = jax.jit(block.init)(jax.random.PRNGKey(0), x8)
  assert jax.eval_shape(block.apply, block_vars, x8).shape == (2, 8, 8, 2048)
  full = inception.variable_shapes()
  want = {c: full[c]["Mixed_7c"] for c in full}
  assert (jax.tree_util.tree_map(lambda a: a.shape, block_vars)
          == jax.tree_util.tree_map(lambda a: a.shape, want))

  x = np.random.default_rng(1).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
  out = np.asarray(jax.jit(inception.InceptionV3().apply)(variables, x))
  assert out.shape == (2, 2048) and out.dtype == np.float32
  assert np.all(np.isfinite(out)) and np.all(out >= 0)  # mean of ReLU outputs
  assert out.std() > 0


@pytest.mark.parametrize("blocks_prefix", [False, True])
def test_convert_state_dict_round_trip(variables, blocks_prefix):
  sd = _to_torch_state_dict(variables, blocks_prefix=blocks_prefix)
  assert len(sd) == 470
  if not blocks_prefix:
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    assert "Mixed_7c.branch_pool.bn.running_var" in sd
  else:
    assert sd["blocks.3.2.branch_pool.bn.running_var"].shape == (192,)
  # Tensors of the raw .pth that the feature extractor does not use are ignored.
  sd["fc.weight"] = np.zeros((1008, 2048), np.float32)
  sd["fc.bias"] = np.zeros((1008,), np.float32)
  sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)
  _assert_trees_equal(inception.convert_state_dict(sd), variables)


def test_convert_state_dict_errors_name_the_keys(variables):
  sd = _to_torch_state_dict(variables)
  bad = dict(sd)
  del bad["Mixed_5b.branch1x1.conv.weight"]
  bad["Mixed_5b.extra.conv.weight"] = np.zeros((1,), np.float32)
  bad["Conv2d_2a_3x3.bn.running_mean"] = np.zeros((33,), np.float32)
  with pytest.raises(ValueError) as err:
    inception.convert_state_dict(bad)
  msg = str(err.value)
  assert "Missing keys (1): Mixed_5b.branch1x1.conv.weight" in msg
  assert "Unexpected keys (1): Mixed_5b.extra.conv.weight" in msg
  assert "Conv2d_2a_3x3.bn.running_mean: got (33,), expected (32,)" in msg

  imagenet = dict(sd, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32),
                         "fc.weight": np.zeros((1000, 2048), np.float32)})
  with pytest.raises(ValueError, match="NOT the FID network"):
    inception.convert_state_dict(imagenet)


def test_load_variables_missing_weights_message(tmp_path):
  for path in ["", None, str(tmp_path / "nope.npz")]:
    with pytest.raises(ConfigError) as err:
      inception.load_variables(path)
    msg = str(err.value)
    assert "--config.evaluate.inception_weights=" in msg
    assert "scripts/convert_inception_weights.py" in msg
    assert "'classifier'" in msg and "'pixels'" in msg
    assert "\n" not in msg
  pth = tmp_path / "pt_inception.pth"
  pth.write_bytes(b"x")
  with pytest.raises(ConfigError, match="converted to .npz"):
    inception.load_variables(str(pth))


def test_load_variables_from_npz(tmp_path, variables):
  path = tmp_path / "pt_inception.npz"
  np.savez(path, **_to_torch_state_dict(variables))
  _assert_trees_equal(inception.load_variables(str(path)), variables)


@pytest.mark.parametrize("n_in", [32, 320])
def test_preprocess_resize_matches_torch_bilinear(n_in):
  """Half-pixel bilinear without antialiasing, as pytorch-fid's F.interpolate(299)."""
  x = np.random.default_rng(n_in).uniform(-1, 1, (1, n_in, n_in, 1)).astype(np.float32)
  got = np.asarray(jax.jit(inception.preprocess)(x))
  assert got.shape == (1, 299, 299, 3)
  m = _torch_bilinear_1d(n_in, 299)
  want = m @ x[0, :, :, 0].astype(np.float64) @ m.T
  # jax.image.resize computes the sample positions in float32 (as torch does, in a different
  # order): ~1e-5 pixel of position rounding, i.e. value differences of a few 1e-5.
  for c in range(3):
    np.testing.assert_allclose(got[0, :, :, c], want, atol=1e-4)


def test_features_gray_small_and_padded(variables, features_fn):
  rng = np.random.default_rng(2)
  gray = rng.uniform(-1, 1, (3, 32, 32, 1)).astype(np.float32)
  f_gray = features_fn(gray)  # 3 images at batch 2: the last batch is padded
  assert f_gray.shape == (3, 2048) and f_gray.dtype == np.float32
  assert np.all(np.isfinite(f_gray)) and f_gray.std() > 0
  # Gray is tiled to RGB; the 32x32 input is resized to 299 before the network.
  f_rgb = features_fn(np.repeat(gray, 3, axis=-1))
  np.testing.assert_allclose(f_rgb, f_gray, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(features_fn(gray[1:]), f_gray[1:], rtol=1e-5, atol=1e-5)
  x299 = jax.image.resize(jnp.repeat(jnp.asarray(gray[:2]), 3, axis=-1), (2, 299, 299, 3),
                          "bilinear", antialias=False)
  direct = np.asarray(jax.jit(inception.InceptionV3().apply)(variables, x299))
  np.testing.assert_allclose(f_gray[:2], direct, rtol=1e-4, atol=1e-4)
  assert features_fn(gray[:0]).shape == (0, 2048)
