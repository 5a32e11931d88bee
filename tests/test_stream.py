"""Streamed data: prepared folders read row by row, the lazy float32 view, prefetching.

Every streamed row must be bit-identical to what the in-memory path holds for the same pixels,
and prefetching must hand out exactly the batches of ``batch_fn(step)`` in step order."""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO
from gpe_jax.data import BatchSampler, DataError, default_data_config, load_dataset
from gpe_jax.data import prefetch, prepare, sources, stream, transforms


def _raw(n=40, shape=(10, 12, 3), seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def test_npy_rows_reads_any_rows_and_rejects_bad_files(tmp_path):
  a = _raw()
  np.save(tmp_path / "a.npy", a)
  rows = stream.NpyRows(str(tmp_path / "a.npy"))
  assert rows.shape == a.shape and rows.dtype == np.uint8 and len(rows) == 40
  idx = np.array([5, 6, 7, 39, 0, 0, 12, 6])   # runs, repeats, any order
  np.testing.assert_array_equal(rows.read(idx), a[idx])
  assert rows.read(np.array([], np.int64)).shape == (0,) + a.shape[1:]
  with pytest.raises(IndexError):
    rows.read(np.array([40]))
  np.save(tmp_path / "b.npy", a)
  with open(tmp_path / "b.npy", "r+b") as f:
    f.truncate(os.path.getsize(tmp_path / "b.npy") - 10)
  with pytest.raises(DataError, match="truncated"):
    stream.NpyRows(str(tmp_path / "b.npy"))
  (tmp_path / "c.npy").write_bytes(b"not an array")
  with pytest.raises(DataError, match="not a readable .npy"):
    stream.NpyRows(str(tmp_path / "c.npy"))


def test_streamed_view_equals_the_in_memory_transform(tmp_path):
  a = _raw()
  np.save(tmp_path / "a.npy", a)
  rows = np.arange(3, 33)
  view = stream.StreamedImages(stream.NpyRows(str(tmp_path / "a.npy")), rows,
                               center_crop_size=-1, image_size=6)
  full = transforms.prepare_images(a[rows], center_crop_size=-1, image_size=6)
  assert view.shape == full.shape == (30, 6, 6, 3) and view.dtype == np.float32
  assert len(view) == 30 and view.ndim == 4
  np.testing.assert_array_equal(np.asarray(view), full)
  np.testing.assert_array_equal(view[[4, 0, 29]], full[[4, 0, 29]])
  np.testing.assert_array_equal(view[7:19], full[7:19])
  np.testing.assert_array_equal(view[3], full[3])
  np.testing.assert_array_equal(view[2:4, 1], full[2:4, 1])
  np.testing.assert_allclose(view.mean(axis=0, keepdims=True),
                             full.mean(axis=0, keepdims=True), rtol=1e-6, atol=1e-6)
  other = stream.StreamedImages(view.store, rows, center_crop_size=-1, image_size=5)
  assert view.fingerprint() != other.fingerprint()


def test_prepared_synthetic_folder_streams_through_load_dataset(tmp_path):
  out = str(tmp_path / "prep")
  meta = prepare.prepare_synthetic(out, 30, (16, 16, 3), seed=1)
  assert meta["counts"] == {"train": 30} and meta["image_shape"] == [16, 16, 3]
  assert sorted(os.listdir(out)) == ["prepared.json", "train_images.npy"]
  raw = np.load(os.path.join(out, "train_images.npy"))
  again = prepare.prepare_synthetic(str(tmp_path / "again"), 30, (16, 16, 3), seed=1)
  np.testing.assert_array_equal(raw, np.load(str(tmp_path / "again" / "train_images.npy")))
  assert raw.std() > 10 and again["source"] == meta["source"]
  # source 'auto' recognises the folder for any image dataset name
  cfg = default_data_config(name="celeb_a_hq", path=out, num_held_out=6, image_size=8)
  ds = load_dataset(cfg)
  assert ds.source == f"prepared:{out}" and isinstance(ds.x_train, stream.StreamedImages)
  assert ds.x_train.shape == (24, 8, 8, 3) and ds.x_test.shape == (6, 8, 8, 3)
  train, test = sources.held_out_split(30, 6, 0, name="celeb_a_hq")
  np.testing.assert_array_equal(np.asarray(ds.x_test),
                                transforms.prepare_images(raw[test], image_size=8))
  batch = BatchSampler({"x": ds.x_train}, 8, seed=0)(3)["x"]
  assert batch.shape == (8, 8, 8, 3) and batch.dtype == np.float32


def test_prepared_npz_keeps_labels_and_the_official_split(tmp_path):
  a, b = _raw(20, (6, 6, 1)), _raw(7, (6, 6, 1), seed=1)
  path = str(tmp_path / "d.npz")
  np.savez(path, x_train=a, y_train=np.arange(20) % 4, x_test=b, y_test=np.arange(7) % 4)
  out = str(tmp_path / "prep")
  meta = prepare.prepare_npz(out, path)
  assert meta["counts"] == {"train": 20, "test": 7} and meta["labels"]
  cfg = default_data_config(name="npz", path=path)
  in_memory = load_dataset(cfg)
  streamed = load_dataset(default_data_config(name="npz", path=out, max_train=15))
  assert streamed.source.startswith("prepared:")
  np.testing.assert_array_equal(np.asarray(streamed.x_train), in_memory.x_train[:15])
  np.testing.assert_array_equal(np.asarray(streamed.x_test), in_memory.x_test)
  np.testing.assert_array_equal(streamed.y_test, in_memory.y_test)
  assert streamed.num_classes == 4


def test_prepared_image_folder_equals_the_folder_source(tmp_path):
  from PIL import Image
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i, img in enumerate(_raw(12, (9, 9, 3), seed=3)):
    Image.fromarray(img).save(folder / f"{i:02d}.png")
  out = str(tmp_path / "prep")
  prepare.prepare_image_folder(out, str(folder))
  kw = dict(num_held_out=3, image_size=4)
  direct = load_dataset(default_data_config(name="image_folder", path=str(folder), **kw))
  streamed = load_dataset(default_data_config(name="image_folder", path=out,
                                              source="prepared", **kw))
  np.testing.assert_array_equal(np.asarray(streamed.x_train), direct.x_train)
  np.testing.assert_array_equal(np.asarray(streamed.x_test), direct.x_test)


def test_prepare_command_line_and_bad_folders(tmp_path):
  out = str(tmp_path / "cli")
  res = subprocess.run([sys.executable, "-m", "gpe_jax.data.prepare", f"--out={out}",
                        "synthetic", "--num=5", "--shape=4,4,1"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 0, res.stderr
  assert json.loads(res.stdout)["counts"] == {"train": 5}
  res = subprocess.run([sys.executable, "-m", "gpe_jax.data.prepare", f"--out={out}",
                        "image_folder", str(tmp_path / "nowhere")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert res.returncode == 2 and "Traceback" not in res.stderr
  assert "is not a directory" in res.stderr
  with pytest.raises(DataError, match="holds no prepared.json"):
    load_dataset(default_data_config(name="celeb_a", source="prepared", path=str(tmp_path)))


def test_prefetcher_hands_out_batch_fn_of_each_step_in_order():
  calls, lock = [], threading.Lock()

  def batch_fn(step):
    with lock:
      calls.append(step)
    time.sleep(0.001 * (step % 3))   # out-of-order completion on the threads
    return {"x": np.full((2,), step)}

  for workers in (0, 1, 3):
    got = [(s, int(b["x"][0])) for s, b in
           prefetch.Prefetcher(batch_fn, dict, 5, 17, workers=workers, device_ahead=2)]
    assert got == [(s, s) for s in range(5, 17)], workers
  calls.clear()
  with prefetch.Prefetcher(batch_fn, dict, 0, 1000, workers=2, host_ahead=4) as it:
    for s, _ in it:
      if s == 3:
        break
  assert max(calls) < 3 + 4 + 2 + 1   # read ahead boundedly, stopped when the loop ended


def test_data_workers_and_prefetch_are_validated_and_not_inputs():
  with pytest.raises(DataError, match="prefetch=0"):
    load_dataset(default_data_config(prefetch=0))
  with pytest.raises(DataError, match="workers=-1"):
    load_dataset(default_data_config(workers=-1))
  from configs import default
  from gpe_jax.stages import common
  a, b = default.get_config("smoke"), default.get_config("smoke")
  b.data.workers, b.data.prefetch = 0, 5
  assert common.base_inputs(a) == common.base_inputs(b)


def test_encoder_stage_on_a_prepared_folder_is_the_same_with_and_without_prefetch(tmp_path):
  """The smoke encoder on a streamed synthetic 8x8 folder: prefetching (2 host threads, 2 steps
  on the devices) changes no parameter bit against reading each batch in the step."""
  import jax
  from configs import default
  from gpe_jax import autoencoders, pipeline, train_loop
  from gpe_jax.experiments.common import variant
  out = str(tmp_path / "prep")
  prepare.prepare_synthetic(out, 160, (8, 8, 1), seed=2)
  params = {}
  for workers in (0, 2):
    cfg = variant(default.get_config("smoke"), **{
        "data.name": "image_folder", "data.path": out, "data.num_held_out": 32,
        "data.workers": workers, "stages": ("encoder",), "encoder.evals": (),
        "num_devices": 1})
    wd = str(tmp_path / f"wd{workers}")
    summary = pipeline.run(cfg, wd)
    assert summary["encoder"]["steps"] == cfg.encoder.num_steps
    params[workers] = autoencoders.restore_variables(
        train_loop.checkpoint_dir(wd, "encoder"), cfg.encoder.num_steps)[0]
  a, b = jax.tree.leaves(params[0]), jax.tree.leaves(params[2])
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_unlabelled_array_record_tfds_is_streamed_and_equals_the_loaded_copy(tmp_path,
                                                                            monkeypatch):
  from test_data import _fake_tfds_builder_cls
  builder_cls = _fake_tfds_builder_cls()
  builder_cls(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  monkeypatch.setitem(sources.TFDS_SPECS, "celeb_a", (builder_cls.name, "train", "test", None))
  cfg = default_data_config(name="celeb_a", tfds_data_dir=str(tmp_path), image_size=4,
                            max_test=4)
  streamed = load_dataset(cfg)   # storage='auto': small data is held in memory
  assert isinstance(streamed.x_train, np.ndarray)
  cfg.storage = "stream"
  streamed = load_dataset(cfg)
  assert isinstance(streamed.x_train, stream.StreamedImages)
  assert streamed.x_train.shape == (12, 4, 4, 3) and streamed.x_test.shape == (4, 4, 4, 3)
  monkeypatch.setattr(sources, "AUTO_STREAM_BYTES", 0)
  cfg.storage = "auto"
  assert isinstance(load_dataset(cfg).x_train, stream.StreamedImages)
  cfg.storage = "memory"
  loaded = load_dataset(cfg)
  assert isinstance(loaded.x_train, np.ndarray)
  np.testing.assert_array_equal(np.asarray(streamed.x_train), loaded.x_train)
  np.testing.assert_array_equal(streamed.x_test[[3, 0]], loaded.x_test[[3, 0]])


# ---------------------------------------------------------------- direct sources, streamed


def _check_views(ds, x_train_ref, x_test_ref, store_type):
  """Streamed splits equal an independent in-memory conversion of the same pixels."""
  assert isinstance(ds.x_train, stream.StreamedImages)
  assert isinstance(ds.x_train.store, store_type), type(ds.x_train.store)
  assert ds.x_train.shape == x_train_ref.shape and ds.x_test.shape == x_test_ref.shape
  np.testing.assert_array_equal(np.asarray(ds.x_train), x_train_ref)
  np.testing.assert_array_equal(np.asarray(ds.x_test), x_test_ref)
  idx = np.array([3, 0, 3, len(x_train_ref) - 1])
  np.testing.assert_array_equal(ds.x_train[idx], x_train_ref[idx])


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_stream_from_their_uint8_storage(tmp_path, gz):
  from test_data import _write_idx_dir
  arrays = _write_idx_dir(tmp_path, n_train=23, n_test=9, gz=gz, seed=3)
  cfg = default_data_config(name="fashion_mnist", path=str(tmp_path), image_size=32,
                            storage="stream", max_test=7)
  ds = load_dataset(cfg)
  ref = lambda a: transforms.prepare_images(a[..., None], image_size=32)
  # A raw file is read in place with positional reads; a .gz is held decompressed as uint8.
  _check_views(ds, ref(arrays["train-images-idx3-ubyte"]), ref(arrays["t10k-images-idx3-ubyte"][:7]),
               stream.ArrayRows if gz else stream.FileRows)
  np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"].astype(np.int32))
  cfg.storage = "memory"
  held = load_dataset(cfg)
  assert isinstance(held.x_train, np.ndarray)
  np.testing.assert_array_equal(held.x_train, np.asarray(ds.x_train))


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_members_stream_in_place_or_compact(tmp_path, compressed):
  rng = np.random.default_rng(4)
  x = rng.integers(0, 256, (30, 9, 7), dtype=np.uint8)     # [N, H, W]: gets a channel axis
  y = rng.integers(0, 5, 30)
  path = str(tmp_path / "d.npz")
  (np.savez_compressed if compressed else np.savez)(path, x_train=x, y_train=y)
  cfg = default_data_config(name="npz", path=path, num_held_out=8, center_crop=-1,
                            image_size=5, storage="stream")
  ds = load_dataset(cfg)
  train, test = sources.held_out_split(30, 8, 0, name="npz")
  ref = transforms.prepare_images(x[..., None], center_crop_size=-1, image_size=5)
  _check_views(ds, ref[train], ref[test], stream.ArrayRows if compressed else stream.FileRows)
  np.testing.assert_array_equal(ds.y_test, y[test].astype(np.int32))
  # Float images in [-1, 1] stream too (range checked chunk by chunk).
  xf = (x[..., None].astype(np.float32) / 255 * 2 - 1)
  np.savez(path, x_train=xf, x_test=xf[:4])
  ds = load_dataset(default_data_config(name="npz", path=path, storage="stream"))
  _check_views(ds, transforms.prepare_images(xf), transforms.prepare_images(xf[:4]),
               stream.FileRows)
  np.savez(path, x_train=xf * 3)
  with pytest.raises(DataError, match="must already lie in"):
    load_dataset(default_data_config(name="npz", path=path, num_held_out=4, storage="stream"))
  # Vectors cannot stream: asking for it is refused in one paragraph naming the way out.
  np.savez(path, x_train=rng.uniform(-1, 1, (10, 6)).astype(np.float32))
  with pytest.raises(DataError, match="gpe_jax.data.prepare"):
    load_dataset(default_data_config(name="npz", path=path, num_held_out=2, storage="stream"))
  assert load_dataset(default_data_config(name="npz", path=path, num_held_out=2)).x_train.shape \
      == (8, 6)


def test_image_folder_decodes_per_batch_and_resizes_mixed_sizes_one_by_one(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(5)
  sizes = [(12, 16), (20, 20), (16, 12), (12, 16)] * 4
  pixels, mixed = [], tmp_path / "mixed"
  mixed.mkdir()
  for i, (h, w) in enumerate(sizes):
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pixels.append(arr)
    Image.fromarray(arr).save(mixed / f"{i:02d}.png")
  cfg = default_data_config(name="image_folder", path=str(mixed), num_held_out=5,
                            center_crop=-1, image_size=8, storage="stream")
  ds = load_dataset(cfg)
  train, test = sources.held_out_split(len(sizes), 5, 0, name="image_folder")
  ref = np.concatenate([transforms.prepare_images(p[None], center_crop_size=-1, image_size=8)
                        for p in pixels])
  _check_views(ds, ref[train], ref[test], stream.FolderRows)
  cfg.storage = "memory"
  np.testing.assert_array_equal(load_dataset(cfg).x_train, ref[train])
  # Without a target size, images of different sizes are refused with the fix named.
  with pytest.raises(DataError, match="image_size"):
    load_dataset(default_data_config(name="image_folder", path=str(mixed), num_held_out=5,
                                     storage="stream"))
  # Same-size folders stream without resizing; prepared folders hold the same pixels.
  same = tmp_path / "same"
  same.mkdir()
  for i in range(6):
    Image.fromarray(pixels[0][..., 0]).save(same / f"{i}.png")   # greyscale: one channel
  ds = load_dataset(default_data_config(name="image_folder", path=str(same), num_held_out=2,
                                        storage="stream"))
  assert ds.x_train.shape == (4, 12, 16, 1)
  out = str(tmp_path / "prep")
  prepare.prepare_image_folder(out, str(mixed), image_size=8, center_crop=-1)
  prepared = np.load(os.path.join(out, "train_images.npy"))
  assert prepared.shape == (16, 8, 8, 3)
  np.testing.assert_array_equal(prepared, prepare._as_uint8(ref))


def test_in_memory_load_that_would_not_fit_is_refused_naming_stream_and_prepare(
    tmp_path, monkeypatch):
  from test_data import _write_idx_dir
  _write_idx_dir(tmp_path, n_train=23, n_test=9, gz=False)
  monkeypatch.setattr(sources, "host_memory_bytes", lambda: 100_000)   # a 100 kB host
  cfg = default_data_config(name="fashion_mnist", path=str(tmp_path), storage="memory")
  with pytest.raises(DataError) as err:
    load_dataset(cfg)
  msg = str(err.value)
  assert "GiB" in msg and "--config.data.storage=stream" in msg and "gpe_jax.data.prepare" in msg
  cfg.storage = "auto"          # small enough for auto to hold it, too big for this host
  with pytest.raises(DataError, match="storage=stream"):
    load_dataset(cfg)
  cfg.storage = "stream"
  assert isinstance(load_dataset(cfg).x_train, stream.StreamedImages)
  cfg.storage = "sometimes"
  with pytest.raises(DataError, match="storage"):
    load_dataset(cfg)
