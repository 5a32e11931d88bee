"""Agreement of gpe_jax's Flax FID Inception-v3 with pytorch-fid 0.3.0's, on random weights.

Not a CI test: it needs PyTorch, torchvision and pytorch-fid, which gpe_jax does not depend on.
The real FID weights cannot be downloaded here, so pytorch-fid's ``InceptionV3([3])`` (its own
``fid_inception_v3`` structure: FIDInceptionA/C/E blocks) is built with the weight download
stubbed out, then every conv weight and every BatchNorm affine parameter is randomised and the
BatchNorm running statistics are calibrated on the test images and then perturbed (so no
BatchNorm is an identity and activations neither vanish nor blow up through the 94 layers).

The torch side writes the raw torchvision-named state dict (the layout of
``pt_inception-2015-12-05-6726825d.pth``) as a .pth, converts it with
``scripts/convert_inception_weights.py``'s loader into the .npz gpe_jax reads, and also saves
pytorch-fid's own ``blocks.N.``-named state dict. A JAX interpreter then loads both with
``gpe_jax.evals.inception`` and computes features with ``make_feature_fn`` on the same images;
pytorch-fid gets them as it expects them (NCHW in [0, 1], gray repeated to 3 channels) and does
its own 299 bilinear resize and [0, 1] -> [-1, 1] scaling.

Run from the repository root with the torch interpreter (the peer venv), pointing
``--jax-python`` at the interpreter that has jax/flax (default: ``python`` on PATH)::

    .peer/bin/python benchmarks/inception_agreement.py [--jax-python python] [--seed 0]

Needs in the torch venv: ``pip install pytorch-fid==0.3.0 torchvision==<match torch> --no-deps``
(plus pillow). Prints one JSON object: per input case the max abs difference, the max abs
difference relative to the largest |feature|, the median relative difference per element, and
the scale of the features.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (count, height/width, channels): upsampling (the usual small-image case), gray
# input, and downsampling (checks the resize does not antialias, as torch's does not).
CASES = {"rgb64": (4, 64, 3), "gray28": (2, 28, 1), "rgb400": (2, 400, 3)}


# ------------------------------------------------------------------------------------------
# Torch side (peer interpreter).
# ------------------------------------------------------------------------------------------

def _import_pytorch_fid():
  """Import pytorch_fid.inception, tolerating a torchvision wheel whose C ops do not load.

  The only torchvision on the package index for a given torch may be the CUDA build; on a CPU
  torch its ``_C.so`` fails to load and ``torchvision/_meta_registrations.py`` then dies while
  registering fake kernels for ops that do not exist. Those ops (nms, roi_align, ...) are unused
  here, so a failed registration is skipped.
  """
  import torch  # pylint: disable=import-outside-toplevel
  import torch.library  # pylint: disable=import-outside-toplevel

  original = torch.library.register_fake

  def tolerant_register_fake(op, func=None, /, **kwargs):
    if func is not None:
      try:
        return original(op, func, **kwargs)
      except RuntimeError:
        return func

    def decorate(f):
      try:
        return original(op, **kwargs)(f)
      except RuntimeError:
        return f
    return decorate

  torch.library.register_fake = tolerant_register_fake
  try:
    import torchvision  # pylint: disable=import-outside-toplevel
    from pytorch_fid import inception as fid  # pylint: disable=import-outside-toplevel
  finally:
    torch.library.register_fake = original
  return torch, torchvision, fid


def _to_torch_input(torch, x: np.ndarray):
  """Our NHWC [-1, 1] images (1 or 3 channels) -> pytorch-fid's input: NCHW RGB in [0, 1]."""
  nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  nchw = nchw.repeat(1, 3, 1, 1) if nchw.shape[1] == 1 else nchw
  return (nchw + 1) / 2


def _build_random_pytorch_fid(torch, fid, rng: np.random.Generator, calibration):
  """pytorch-fid InceptionV3([3]) with random weights; returns (model, inner torchvision net).

  ``calibration``: input batches (pytorch-fid convention) whose batch statistics, averaged,
  become the BatchNorm running statistics before they are perturbed.
  """
  captured = {}
  real_builder = fid.fid_inception_v3
  real_loader = fid.load_state_dict_from_url
  real_load_state_dict = torch.nn.Module.load_state_dict

  def capture():
    net = real_builder()
    captured["net"] = net
    return net

  fid.fid_inception_v3 = capture
  fid.load_state_dict_from_url = lambda *a, **k: {}
  torch.nn.Module.load_state_dict = lambda self, *a, **k: None  # skip the (download) load only
  try:
    model = fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
  finally:
    fid.fid_inception_v3 = real_builder
    fid.load_state_dict_from_url = real_loader
    torch.nn.Module.load_state_dict = real_load_state_dict
  net = captured["net"]

  def t(a):
    return torch.from_numpy(np.asarray(a, np.float32))

  bns = []
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(t(rng.normal(size=m.weight.shape) * np.sqrt(2.0 / fan_in)))
      elif isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(t(rng.uniform(0.5, 1.5, m.weight.shape)))
        m.bias.copy_(t(rng.normal(0.0, 0.2, m.bias.shape)))
        bns.append(m)
    # Running statistics: the batch statistics of the calibration batches (cumulative
    # average), then perturbed so that they are not exactly the statistics of any batch.
    for m in bns:
      m.reset_running_stats()
      m.momentum = None
    model.train()
    for batch in calibration:
      model(batch)
    model.eval()
    for m in bns:
      m.momentum = 0.1
      std = m.running_var.sqrt()
      m.running_var.mul_(t(rng.uniform(0.7, 1.4, m.running_var.shape)))
      m.running_mean.add_(0.1 * std * t(rng.normal(size=m.running_mean.shape)))
  return model, net


def _load_converter():
  path = os.path.join(REPO, "scripts", "convert_inception_weights.py")
  spec = importlib.util.spec_from_file_location("convert_inception_weights", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def torch_side(args) -> dict:
  torch, torchvision, fid = _import_pytorch_fid()
  torch.manual_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  images = {name: rng.uniform(-1, 1, (n, size, size, c)).astype(np.float32)  # NHWC, [-1, 1]
            for name, (n, size, c) in CASES.items()}
  model, net = _build_random_pytorch_fid(
      torch, fid, rng, [_to_torch_input(torch, x) for x in images.values()])

  work = tempfile.mkdtemp(prefix="inception_agreement_")
  try:
    # The raw-file layout: torchvision names (with fc, num_batches_tracked), via the converter.
    pth = os.path.join(work, "pt_inception_random.pth")
    torch.save(net.state_dict(), pth)
    raw = _load_converter().load_torch_state_dict(pth)
    np.savez(os.path.join(work, "raw.npz"), **raw)
    blocks = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    np.savez(os.path.join(work, "blocks.npz"), **blocks)

    torch_feats, t_torch = {}, 0.0
    for name, x in images.items():
      t0 = time.perf_counter()
      with torch.no_grad():
        out = model(_to_torch_input(torch, x))[0]
      t_torch += time.perf_counter() - t0
      torch_feats[name] = out.squeeze(-1).squeeze(-1).numpy()
    np.savez(os.path.join(work, "images.npz"), **images)

    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([args.jax_python, os.path.abspath(__file__), "--jax-side", work],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      sys.exit(f"JAX side failed ({args.jax_python}):\n{proc.stdout}\n{proc.stderr}")
    jax_info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(os.path.join(work, "jax_features.npz")) as d:
      jax_feats = {k: d[k] for k in d.files}
  finally:
    shutil.rmtree(work, ignore_errors=True)

  result = {
      "torch": torch.__version__, "torchvision": torchvision.__version__,
      "pytorch_fid": _version("pytorch-fid"), "seed": args.seed,
      "raw_vs_blocks_names_identical": jax_info["raw_vs_blocks_identical"],
      "jax": jax_info["jax"], "flax": jax_info["flax"], "backend": jax_info["backend"],
      "torch_forward_s": round(t_torch, 2), "jax_s": jax_info["seconds"], "cases": {},
  }
  for name, (n, size, c) in CASES.items():
    ref = torch_feats[name].astype(np.float64)
    got = jax_feats[name].astype(np.float64)
    diff = np.abs(got - ref)
    result["cases"][name] = {
        "shape_in": [n, size, size, c], "shape_out": list(got.shape),
        "max_abs_diff": float(diff.max()),
        "max_abs_diff_over_max_abs_feature": float(diff.max() / np.abs(ref).max()),
        "median_rel_diff": float(np.median(diff / np.maximum(np.abs(ref), 1e-6))),
        "max_rel_l2_per_image": float(np.max(np.linalg.norm(got - ref, axis=1)
                                             / np.linalg.norm(ref, axis=1))),
        "feature_mean": float(ref.mean()), "feature_std": float(ref.std()),
        "feature_max": float(ref.max()),
    }
  return result


def _version(dist: str) -> str:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  try:
    return metadata.version(dist)
  except metadata.PackageNotFoundError:
    return "?"


# ------------------------------------------------------------------------------------------
# JAX side (subprocess, the interpreter with jax/flax).
# ------------------------------------------------------------------------------------------

def jax_side(work: str) -> None:
  import flax  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  from gpe_jax.evals import inception  # pylint: disable=import-outside-toplevel

  variables = inception.load_variables(os.path.join(work, "raw.npz"))
  with np.load(os.path.join(work, "blocks.npz")) as d:
    from_blocks = inception.convert_state_dict({k: d[k] for k in d.files})
  same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(variables),
                                                  jax.tree_util.tree_leaves(from_blocks)))
  features = inception.make_feature_fn(variables, batch_size=4)
  out, t0 = {}, time.perf_counter()
  with np.load(os.path.join(work, "images.npz")) as d:
    for name in d.files:
      out[name] = features(d[name])
  seconds = time.perf_counter() - t0
  np.savez(os.path.join(work, "jax_features.npz"), **out)
  print(json.dumps({"raw_vs_blocks_identical": bool(same), "jax": jax.__version__,
                    "flax": flax.__version__, "backend": jax.default_backend(),
                    "seconds": round(seconds, 2)}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--jax-python", default=os.environ.get("JAX_PYTHON", "python"),
                      help="interpreter with jax/flax/gpe_jax (default: $JAX_PYTHON or python)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--jax-side", metavar="DIR", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.jax_side:
    jax_side(args.jax_side)
    return
  resolved = shutil.which(args.jax_python)
  if resolved and os.path.realpath(resolved) == os.path.realpath(sys.executable):
    sys.exit(f"--jax-python {args.jax_python!r} is this (torch) interpreter; pass the one that "
             "has jax and flax, e.g. --jax-python /usr/bin/python3")
  print(json.dumps(torch_side(args), indent=1))


if __name__ == "__main__":
  main()
