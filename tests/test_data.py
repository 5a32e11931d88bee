"""Tests of gpe_jax.data: sources, transforms, splits, batching. Offline and fast (CPU)."""
import functools
import gzip
import importlib.util
import os
import shutil
import time

import numpy as np
import pytest

from gpe_jax import data
from gpe_jax.data import sources
from gpe_jax.data import transforms
from gpe_jax.data import DataError
from gpe_jax.data import default_data_config
from gpe_jax.data import load_dataset

FASHION_DIR = '/usr/share/datasets/fashion-mnist'
HAVE_FASHION = os.path.exists(os.path.join(FASHION_DIR, 'train-images-idx3-ubyte.gz'))


# ----------------------------------------------------------------------------- config


def test_default_config_has_every_field_and_overrides():
  cfg = default_data_config()
  for field in ('name', 'path', 'source', 'image_size', 'center_crop', 'num_held_out',
                'max_train', 'max_test', 'split_seed', 'tfds_data_dir', 'batch_size'):
    assert field in cfg
  assert (cfg.name, cfg.source, cfg.num_held_out, cfg.batch_size) == ('digits', 'auto', 297, 100)
  assert cfg.mixture.to_dict() == dict(num_components=6, dim=500, num_train=6000, num_test=1200,
                                       radius=4.0, std_major=0.6, std_minor=0.01, seed=0,
                                       layout='circle', shift=0.0)
  cfg = default_data_config(name='mixture', mixture=dict(dim=10))
  assert cfg.name == 'mixture' and cfg.mixture.dim == 10 and cfg.mixture.num_components == 6
  with pytest.raises(DataError, match='unknown field'):
    default_data_config(nmae='digits')


def test_public_api():
  for name in ('DataError', 'Dataset', 'DATASETS', 'load_dataset', 'batch_indices',
               'BatchSampler', 'iterate_eval_batches', 'default_data_config'):
    assert hasattr(data, name)
  assert issubclass(DataError, ValueError)
  assert set(data.DATASETS) == {'digits', 'fashion_mnist', 'mnist', 'cifar10', 'celeb_a',
                                'celeb_a_hq', 'mixture', 'npz', 'image_folder'}


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_range_labels_and_split():
  from sklearn.datasets import load_digits
  ds = load_dataset(default_data_config())
  assert ds.name == 'digits' and ds.source == 'sklearn digits'
  assert ds.x_train.shape == (1500, 8, 8, 1) and ds.x_test.shape == (297, 8, 8, 1)
  assert ds.example_shape == (8, 8, 1) and ds.num_classes == 10
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.x_train.min() == -1.0 and ds.x_train.max() == 1.0
  assert ds.y_train.shape == (1500,) and ds.y_test.shape == (297,)
  assert set(np.unique(ds.y_test)) <= set(range(10))
  # The split is a partition of the 1,797 real images (values x / 16 * 2 - 1), with labels.
  raw = load_digits()
  full = np.concatenate([ds.x_train, ds.x_test])[..., 0]
  order = np.lexsort(full.reshape(len(full), -1).T)
  ref_order = np.lexsort((raw.images / 16 * 2 - 1).reshape(len(full), -1).T)
  np.testing.assert_allclose(full[order], (raw.images / 16 * 2 - 1)[ref_order], atol=1e-6)
  labels = np.concatenate([ds.y_train, ds.y_test])
  assert np.bincount(labels).tolist() == np.bincount(raw.target).tolist()


def test_digits_arrays_are_sklearns_load_digits():
  """The bundled CSV read directly gives exactly what sklearn.datasets.load_digits() does."""
  from sklearn.datasets import load_digits
  from gpe_jax.data import sources
  images, target = sources.digits_arrays()
  raw = load_digits()
  assert images.dtype == raw.images.dtype and images.shape == raw.images.shape
  np.testing.assert_array_equal(images, raw.images)
  np.testing.assert_array_equal(target, raw.target)


def test_digits_split_is_deterministic_in_split_seed():
  a = load_dataset(default_data_config(split_seed=3))
  b = load_dataset(default_data_config(split_seed=3))
  c = load_dataset(default_data_config(split_seed=4))
  np.testing.assert_array_equal(a.x_test, b.x_test)
  np.testing.assert_array_equal(a.y_train, b.y_train)
  assert not np.array_equal(a.x_test, c.x_test)
  small = load_dataset(default_data_config(split_seed=3, max_train=100, max_test=50,
                                           num_held_out=200))
  assert small.x_train.shape[0] == 100 and small.x_test.shape[0] == 50
  with pytest.raises(DataError, match='num_held_out'):
    load_dataset(default_data_config(num_held_out=5000))


def test_digits_crop_and_resize():
  ds = load_dataset(default_data_config(image_size=16, center_crop=6))
  assert ds.x_train.shape == (1500, 16, 16, 1)
  assert ds.x_train.min() >= -1.0 and ds.x_train.max() <= 1.0


# ----------------------------------------------------------------------------- transforms


def test_resize_matches_jax_image_resize():
  import jax
  rng = np.random.default_rng(0)
  for (h, w), size in (((28, 28), 32), ((28, 28), 14), ((30, 22), 9), ((5, 7), 11)):
    x = rng.uniform(-1, 1, (3, h, w, 2)).astype(np.float32)
    ref = jax.image.resize(x, (3, size, size, 2), method='linear', antialias=True)
    np.testing.assert_allclose(transforms.resize(x, size), np.asarray(ref), atol=2e-6)


def test_center_crop_and_scaling():
  x = np.arange(2 * 6 * 4 * 1, dtype=np.uint8).reshape(2, 6, 4, 1)
  assert transforms.center_crop(x, -1).shape == (2, 4, 4, 1)
  np.testing.assert_array_equal(transforms.center_crop(x, -1), x[:, 1:5])
  np.testing.assert_array_equal(transforms.center_crop(x, 2), x[:, 2:4, 1:3])
  with pytest.raises(DataError, match='center_crop'):
    transforms.center_crop(x, 5)
  y = transforms.prepare_images(x)
  np.testing.assert_array_equal(y, x.astype(np.float32) / 255 * 2 - 1)
  f = np.full((2, 4, 4, 1), 1.0005, np.float32)
  out = transforms.prepare_images(f)
  assert out.max() == 1.0 and f.max() > 1.0  # clipped copy, input untouched


# ----------------------------------------------------------------------------- IDX


def _idx_bytes(arr: np.ndarray) -> bytes:
  assert arr.dtype == np.uint8
  header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, '>u4').tobytes()
  return header + arr.tobytes()


def _write_idx_dir(directory, n_train=7, n_test=3, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {
      'train-images-idx3-ubyte': rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      'train-labels-idx1-ubyte': rng.integers(0, 10, (n_train,), dtype=np.uint8),
      't10k-images-idx3-ubyte': rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      't10k-labels-idx1-ubyte': rng.integers(0, 10, (n_test,), dtype=np.uint8),
  }
  os.makedirs(directory, exist_ok=True)
  for base, arr in arrays.items():
    raw = _idx_bytes(arr)
    if gz:
      with open(os.path.join(directory, base + '.gz'), 'wb') as f:
        f.write(gzip.compress(raw))
    else:
      with open(os.path.join(directory, base), 'wb') as f:
        f.write(raw)
  return arrays


def test_idx_parser_raw_gz_and_corrupt(tmp_path):
  arr = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
  (tmp_path / 'a-idx3-ubyte').write_bytes(_idx_bytes(arr))
  (tmp_path / 'a-idx3-ubyte.gz').write_bytes(gzip.compress(_idx_bytes(arr)))
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / 'a-idx3-ubyte')), arr)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / 'a-idx3-ubyte.gz')), arr)
  bad = bytearray(_idx_bytes(arr))
  bad[0:4] = b'\x12\x34\x08\x03'
  (tmp_path / 'bad').write_bytes(bytes(bad))
  with pytest.raises(DataError, match='magic'):
    data.read_idx(str(tmp_path / 'bad'))
  (tmp_path / 'short').write_bytes(_idx_bytes(arr)[:-7])
  with pytest.raises(DataError, match='corrupt'):
    data.read_idx(str(tmp_path / 'short'))
  (tmp_path / 'notgz.gz').write_bytes(b'not gzip at all')
  with pytest.raises(DataError):
    data.read_idx(str(tmp_path / 'notgz.gz'))


@pytest.mark.parametrize('gz', [True, False])
def test_idx_dataset_from_path(tmp_path, gz):
  arrays = _write_idx_dir(str(tmp_path), gz=gz)
  ds = load_dataset(default_data_config(name='mnist', path=str(tmp_path)))
  assert ds.x_train.shape == (7, 28, 28, 1) and ds.x_test.shape == (3, 28, 28, 1)
  np.testing.assert_array_equal(
      ds.x_train[..., 0], arrays['train-images-idx3-ubyte'].astype(np.float32) / 255 * 2 - 1)
  np.testing.assert_array_equal(ds.y_test, arrays['t10k-labels-idx1-ubyte'])
  assert ds.source == f'idx:{tmp_path}'


@pytest.mark.skipif(not HAVE_FASHION,
                    reason='Debian package dataset-fashion-mnist not installed')
def test_fashion_mnist_debian_files():
  ds = load_dataset(default_data_config(name='fashion_mnist'))
  assert ds.source == f'idx:{FASHION_DIR}'
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.y_train.shape == (60000,) and ds.num_classes == 10
  assert np.bincount(ds.y_train).tolist() == [6000] * 10
  assert ds.x_train.min() == -1.0 and ds.x_train.max() == 1.0
  small = load_dataset(default_data_config(name='fashion_mnist', image_size=32, max_train=5000))
  assert small.x_train.shape == (5000, 32, 32, 1) and small.x_test.shape == (10000, 32, 32, 1)
  assert small.x_train.min() >= -1.0 and small.x_train.max() <= 1.0
  # Upsampling keeps the mean brightness of each image.
  np.testing.assert_allclose(small.x_train[:50].mean(axis=(1, 2, 3)),
                             ds.x_train[:50].mean(axis=(1, 2, 3)), atol=0.02)


# ----------------------------------------------------------------------------- npz


def test_npz_uint8_with_test_split(tmp_path):
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
  x_test = rng.integers(0, 256, (5, 6, 6), dtype=np.uint8)
  path = str(tmp_path / 'd.npz')
  np.savez(path, x_train=x_train, x_test=x_test, y_train=np.arange(20) % 4,
           y_test=np.arange(5) % 4)
  ds = load_dataset(default_data_config(name='npz', path=path))
  assert ds.x_train.shape == (20, 6, 6, 1) and ds.x_test.shape == (5, 6, 6, 1)
  np.testing.assert_array_equal(ds.x_test[..., 0], x_test.astype(np.float32) / 255 * 2 - 1)
  assert ds.y_train.dtype == np.int32 and ds.num_classes == 4
  ds = load_dataset(default_data_config(name='npz', path=path, image_size=3, max_train=8))
  assert ds.x_train.shape == (8, 3, 3, 1)


def test_npz_float_without_test_split_and_vectors(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (30, 4, 4, 3)).astype(np.float32)
  path = str(tmp_path / 'f.npz')
  np.savez(path, x_train=x)
  ds = load_dataset(default_data_config(name='npz', path=path, num_held_out=10))
  assert ds.x_train.shape == (20, 4, 4, 3) and ds.x_test.shape == (10, 4, 4, 3)
  assert ds.y_train is None and ds.num_classes is None
  rows = {r.tobytes() for r in np.concatenate([ds.x_train, ds.x_test])}
  assert rows == {r.tobytes() for r in x}
  vec = str(tmp_path / 'v.npz')
  np.savez(vec, x_train=rng.uniform(-1, 1, (12, 7)), y_train=np.arange(12))
  ds = load_dataset(default_data_config(name='npz', path=vec, num_held_out=2))
  assert ds.x_train.shape == (10, 7) and ds.x_test.shape == (2, 7)
  assert ds.x_train.dtype == np.float32 and ds.y_test.shape == (2,)
  out_of_range = str(tmp_path / 'o.npz')
  np.savez(out_of_range, x_train=x * 3)
  with pytest.raises(DataError, match=r'\[-1, 1\]'):
    load_dataset(default_data_config(name='npz', path=out_of_range, num_held_out=10))
  with pytest.raises(DataError, match='x_train'):
    np.savez(str(tmp_path / 'k.npz'), images=x)
    load_dataset(default_data_config(name='npz', path=str(tmp_path / 'k.npz')))


# ----------------------------------------------------------------------------- image folder


def test_image_folder(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  colours = []
  for i in range(8):
    sub = tmp_path / ('a' if i < 4 else 'b')
    sub.mkdir(exist_ok=True)
    colour = rng.integers(0, 256, 3, dtype=np.uint8)
    colours.append(colour)
    Image.fromarray(np.tile(colour, (10, 14, 1))).save(sub / f'img{i}.png')
  (tmp_path / 'notes.txt').write_text('ignored')
  ds = load_dataset(default_data_config(name='image_folder', path=str(tmp_path), num_held_out=2))
  assert ds.x_train.shape == (6, 10, 14, 3) and ds.x_test.shape == (2, 10, 14, 3)
  assert ds.y_train is None
  # Constant images stay constant through crop + resize, at the right value.
  ds = load_dataset(default_data_config(name='image_folder', path=str(tmp_path), num_held_out=2,
                                        center_crop=-1, image_size=4))
  assert ds.x_train.shape == (6, 4, 4, 3)
  got = {tuple(np.round(im[0, 0], 5)) for im in np.concatenate([ds.x_train, ds.x_test])}
  want = {tuple(np.round(c.astype(np.float32) / 255 * 2 - 1, 5)) for c in colours}
  assert got == want
  # All-greyscale folders load with one channel.
  gray = tmp_path / 'gray'
  gray.mkdir()
  for i in range(3):
    Image.fromarray(np.full((5, 5), 40 * i, np.uint8), mode='L').save(gray / f'{i}.png')
  ds = load_dataset(default_data_config(name='image_folder', path=str(gray), num_held_out=1))
  assert ds.example_shape == (5, 5, 1)


def test_image_folder_errors(tmp_path):
  with pytest.raises(DataError, match='no .png/.jpg/.jpeg images'):
    load_dataset(default_data_config(name='image_folder', path=str(tmp_path)))
  with pytest.raises(DataError, match='not a directory'):
    load_dataset(default_data_config(name='image_folder', path=str(tmp_path / 'missing')))


# ----------------------------------------------------------------------------- mixture


def test_mixture_shapes_labels_and_variance():
  cfg = default_data_config(name='mixture', mixture=dict(dim=40, num_train=3000, num_test=600))
  ds = load_dataset(cfg)
  assert ds.x_train.shape == (3000, 40) and ds.x_test.shape == (600, 40)
  assert ds.x_train.dtype == np.float32 and ds.num_classes == 6
  centres = sources.mixture_centres(6, 40, 4.0)
  np.testing.assert_allclose(np.linalg.norm(centres[:, :2], axis=1), 4.0)
  resid = ds.x_train - centres[ds.y_train]
  std = resid.std(axis=0)
  np.testing.assert_allclose(std[:2], 0.6, rtol=0.1)
  np.testing.assert_allclose(std[2:], 0.01, rtol=0.1)
  counts = np.bincount(ds.y_train, minlength=6)
  assert counts.min() > 400  # equal weights: ~500 each
  again = load_dataset(cfg)
  np.testing.assert_array_equal(again.x_test, ds.x_test)
  assert not np.array_equal(ds.x_train[:600], ds.x_test)  # independent draws
  with pytest.raises(DataError, match='image_size'):
    load_dataset(default_data_config(name='mixture', image_size=32))


# The GMEGAN authors' mixture: r = 1.1 sigma, sigma = 0.15, shift 0.5, minor std 0.1 sigma.
_RINGS = dict(layout='rings', dim=100, radius=0.165, shift=0.5, std_major=0.15, std_minor=0.015,
              num_train=3000, num_test=300)


@pytest.mark.parametrize('k', [12, 9])
def test_mixture_rings_layout(k):
  cfg = default_data_config(name='mixture', mixture=dict(_RINGS, num_components=k))
  ds = load_dataset(cfg)
  assert ds.x_train.shape == (3000, 100) and ds.num_classes == k
  spec = sources.mixture_spec(cfg)
  centres = spec['centres']
  assert centres.shape == (k, 100) and spec['inner'] == k // 3 and spec['layout'] == 'rings'
  assert (spec['std_major'], spec['std_minor']) == (0.15, 0.015)
  np.testing.assert_array_equal(centres, sources.mixture_centres(k, 100, 0.165, 'rings', 0.5))
  rel = centres[:, :2] - 0.5
  radii = np.linalg.norm(rel, axis=1)
  np.testing.assert_allclose(radii[:k // 3], 3 * 0.165)
  np.testing.assert_allclose(radii[k // 3:], 9 * 0.165)
  np.testing.assert_array_equal(centres[:, 2:], 0.0)
  for ring, n in ((slice(0, k // 3), k // 3), (slice(k // 3, k), 2 * k // 3)):
    angles = np.arctan2(rel[ring, 1], rel[ring, 0]) % (2 * np.pi)
    np.testing.assert_allclose(angles, 2 * np.pi * np.arange(n) / n, atol=1e-12)
  counts = np.bincount(ds.y_train, minlength=k)
  np.testing.assert_allclose(counts / 3000, 1 / k, atol=0.03)
  std = (ds.x_train - centres[ds.y_train]).std(axis=0)
  np.testing.assert_allclose(std[:2], 0.15, rtol=0.1)
  np.testing.assert_allclose(std[2:], 0.015, rtol=0.1)
  assert 'layout=rings' in ds.source


def test_mixture_circle_shift_and_positional_centres():
  base = sources.mixture_centres(6, 5, 4.0)
  np.testing.assert_array_equal(base, sources.mixture_centres(6, 5, 4.0, 'circle', 0.0))
  shifted = sources.mixture_centres(6, 5, 4.0, layout='circle', shift=0.5)
  np.testing.assert_allclose(shifted[:, :2], base[:, :2] + 0.5)
  np.testing.assert_array_equal(shifted[:, 2:], 0.0)
  cfg = default_data_config(name='mixture', mixture=dict(dim=5, num_train=50, num_test=20))
  spec = sources.mixture_spec(cfg)
  assert spec['layout'] == 'circle' and spec['inner'] is None
  np.testing.assert_array_equal(spec['centres'], base)
  plain = load_dataset(cfg)
  cfg.mixture.shift = 0.5
  moved = load_dataset(cfg)
  np.testing.assert_allclose(moved.x_train[:, :2], plain.x_train[:, :2] + 0.5, atol=1e-5)
  np.testing.assert_array_equal(moved.x_train[:, 2:], plain.x_train[:, 2:])


@pytest.mark.parametrize('k', [10, 2, 4])
def test_mixture_rings_bad_k(k):
  cfg = default_data_config(name='mixture', mixture=dict(_RINGS, num_components=k))
  with pytest.raises(DataError, match='multiple of 3'):
    load_dataset(cfg)
  with pytest.raises(DataError, match='multiple of 3'):
    sources.mixture_centres(k, 4, 1.0, layout='rings')


def test_mixture_bad_layout():
  cfg = default_data_config(name='mixture', mixture=dict(layout='ring'))
  with pytest.raises(DataError, match="layout='ring'.*'circle', 'rings'"):
    load_dataset(cfg)
  with pytest.raises(DataError, match='Unknown mixture layout'):
    sources.mixture_centres(6, 4, 1.0, layout='spiral')


# ----------------------------------------------------------------------------- missing data


def test_missing_mnist_names_the_path(tmp_path):
  with pytest.raises(DataError) as e:
    load_dataset(default_data_config(name='mnist', path=str(tmp_path)))
  assert str(tmp_path) in str(e.value) and 'mnist' in str(e.value)


def test_mnist_files_are_found_under_gpe_jax_cache(tmp_path, monkeypatch):
  monkeypatch.setenv('GPE_JAX_CACHE', str(tmp_path / 'cache'))
  monkeypatch.chdir(tmp_path)
  with pytest.raises(DataError, match=str(tmp_path / 'cache' / 'mnist')):
    load_dataset(default_data_config(name='mnist', tfds_data_dir=str(tmp_path / 'tfds')))
  arrays = _write_idx_dir(tmp_path / 'cache' / 'mnist', n_train=5, n_test=2)
  ds = load_dataset(default_data_config(name='mnist', tfds_data_dir=str(tmp_path / 'tfds')))
  assert ds.source == f"idx:{tmp_path / 'cache' / 'mnist'}" and ds.x_train.shape == (5, 28, 28, 1)
  np.testing.assert_array_equal(ds.y_test, arrays['t10k-labels-idx1-ubyte'].astype(np.int32))


def test_missing_cifar10_fails_fast_without_download(tmp_path):
  start = time.time()
  with pytest.raises(DataError) as e:
    load_dataset(default_data_config(name='cifar10', tfds_data_dir=str(tmp_path)))
  assert time.time() - start < 5
  msg = str(e.value)
  assert 'cifar10' in msg and str(tmp_path) in msg and 'tfds build cifar10' in msg
  assert '\n' not in msg
  with pytest.raises(DataError, match='image_folder'):
    load_dataset(default_data_config(name='celeb_a', tfds_data_dir=str(tmp_path)))


def test_unknown_name_and_bad_source():
  with pytest.raises(DataError) as e:
    load_dataset(default_data_config(name='imagenet'))
  for name in data.DATASETS:
    assert name in str(e.value)
  with pytest.raises(DataError, match='cannot be read from source'):
    load_dataset(default_data_config(name='cifar10', source='sklearn'))


# ----------------------------------------------------------------------------- tfds (offline)


@functools.lru_cache(maxsize=None)
def _fake_tfds_builder_cls():
  """A tiny registered tfds builder, prepared offline as array_record in the tests."""
  tfds = pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('array_record')
  from PIL import Image

  class GpeDataTestImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(6, 6, 3)),
          'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(12, 0), 'test': self._generate_examples(5, 1)}

    def _generate_examples(self, n, seed):
      for i in range(n):
        # A PIL image is PNG-encoded by PIL, so preparing needs no TensorFlow.
        image = Image.fromarray(np.full((6, 6, 3), 20 * i + seed, np.uint8))
        yield i, {'image': image, 'label': i % 3}

  return GpeDataTestImages


def test_tfds_array_record_offline(tmp_path, monkeypatch):
  builder_cls = _fake_tfds_builder_cls()
  builder_cls(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  name = builder_cls.name
  monkeypatch.setitem(sources.TFDS_SPECS, 'cifar10', (name, 'train', 'test', 'label'))
  ds = load_dataset(default_data_config(name='cifar10', tfds_data_dir=str(tmp_path),
                                        image_size=3, max_test=4))
  assert ds.source == f'tfds:{name}@{tmp_path}'
  assert ds.x_train.shape == (12, 3, 3, 3) and ds.x_test.shape == (4, 3, 3, 3)
  assert ds.y_train.dtype == np.int32 and ds.num_classes == 3
  # Records decode to constant images whose value identifies the record.
  values = np.round((ds.x_train[:, 0, 0, 0] + 1) / 2 * 255).astype(int)
  labels = {v: l for v, l in zip(values, ds.y_train)}
  assert sorted(labels) == [20 * i for i in range(12)]
  assert all(labels[20 * i] == i % 3 for i in range(12))
  # A source without a test split gets a held-out split of the train records.
  monkeypatch.setitem(sources.TFDS_SPECS, 'celeb_a_hq', (name, 'train', None, None))
  ds = load_dataset(default_data_config(name='celeb_a_hq', tfds_data_dir=str(tmp_path),
                                        num_held_out=4))
  assert ds.x_train.shape == (8, 6, 6, 3) and ds.x_test.shape == (4, 6, 6, 3)
  assert ds.y_train is None
  # A copy whose name no registered builder knows is still read from its own metadata.
  shutil.copytree(tmp_path / name / '1.0.0', tmp_path / 'copy' / 'gpe_unregistered' / '1.0.0')
  monkeypatch.setitem(sources.TFDS_SPECS, 'cifar10', ('gpe_unregistered', 'train', 'test', 'label'))
  ds = load_dataset(default_data_config(name='cifar10', tfds_data_dir=str(tmp_path / 'copy')))
  assert ds.x_train.shape == (12, 6, 6, 3) and ds.y_test.shape == (5,)
  # tfrecord copies need TensorFlow; without it the error says what to do.
  monkeypatch.setattr(sources, '_is_array_record', lambda builder: False)
  if importlib.util.find_spec('tensorflow') is None:
    with pytest.raises(DataError, match='--file_format=array_record'):
      load_dataset(default_data_config(name='cifar10', tfds_data_dir=str(tmp_path / 'copy')))


# ----------------------------------------------------------------------------- batching


def test_batch_indices_is_a_function_of_seed_and_step():
  n, b = 103, 10  # 10 steps per epoch, 3 examples dropped each epoch
  later = data.batch_indices(7, 25, n, b)
  for step in range(25):
    data.batch_indices(7, step, n, b)
  np.testing.assert_array_equal(data.batch_indices(7, 25, n, b), later)
  assert later.dtype == np.int64 and later.shape == (b,)
  assert not np.array_equal(data.batch_indices(8, 25, n, b), later)
  for epoch in range(3):
    idx = np.concatenate([data.batch_indices(7, epoch * 10 + s, n, b) for s in range(10)])
    perm = np.random.default_rng([7, epoch]).permutation(n)
    np.testing.assert_array_equal(idx, perm[:100])
    assert len(set(idx.tolist())) == 100
  with pytest.raises(DataError):
    data.batch_indices(0, 0, 5, 10)


def test_batch_sampler_process_slices():
  n, b = 50, 8
  x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
  y = np.arange(n, dtype=np.int32)
  samplers = [data.BatchSampler({'x': x, 'y': y}, b, seed=3, process_index=p, process_count=2)
              for p in range(2)]
  for step in (0, 1, 5, 6, 7, 30, 2):  # crosses epochs, and back
    parts = [s(step) for s in samplers]
    idx = data.batch_indices(3, step, n, b)
    assert all(part['x'].shape == (4, 2) for part in parts)
    assert not set(parts[0]['y'].tolist()) & set(parts[1]['y'].tolist())
    np.testing.assert_array_equal(np.concatenate([p['y'] for p in parts]), idx)
    np.testing.assert_array_equal(np.concatenate([p['x'] for p in parts]), x[idx])
  with pytest.raises(DataError, match='divisible'):
    data.BatchSampler({'x': x}, 9, seed=0, process_index=0, process_count=2)
  assert set(data.BatchSampler({'x': x, 'y': None}, b, seed=0)(0)) == {'x'}


def test_iterate_eval_batches():
  x = np.arange(23)
  batches = list(data.iterate_eval_batches(x, 5))
  assert [len(b) for b in batches] == [5] * 4
  np.testing.assert_array_equal(np.concatenate(batches), x[:20])
  assert len(list(data.iterate_eval_batches(x, 5, max_examples=12))) == 2
  with pytest.raises(DataError):
    data.iterate_eval_batches(x, 5, max_examples=4)
  with pytest.raises(DataError):
    data.iterate_eval_batches(x, 30)


def test_dataset_validates_layout():
  x = np.zeros((3, 4, 4, 1), np.float32)
  with pytest.raises(DataError):
    data.Dataset('t', x, np.zeros((2, 5, 5, 1), np.float32), None, None, 'test')
  with pytest.raises(DataError):
    data.Dataset('t', x, x, np.zeros(3, np.int32), None, 'test')
  with pytest.raises(DataError):
    data.Dataset('t', x.astype(np.float64), x, None, None, 'test')
