"""Convert the pytorch-fid Inception-v3 weights (.pth) into the .npz that gpe_jax loads.

Usage:
    python scripts/convert_inception_weights.py IN.pth OUT.npz   # convert (needs torch), verify
    python scripts/convert_inception_weights.py --check OUT.npz  # verify only (needs jax/flax)

IN.pth is the standard FID file ``pt_inception-2015-12-05-6726825d.pth`` (what pytorch-fid
downloads); a checkpoint of pytorch-fid's ``InceptionV3`` module (``blocks.N.`` names) works too.
OUT.npz holds one array per tensor, keyed by the torch names (``Conv2d_1a_3x3.conv.weight``,
...), exactly as in the state dict: layout changes happen at load time in
``gpe_jax.evals.inception.convert_state_dict``. torch is imported only for the conversion and is
not a dependency of gpe_jax. After writing, the file is verified by loading it into the Flax
model when jax/flax/gpe_jax are importable in this interpreter; otherwise run ``--check`` with
the interpreter that has them. See docs/inception.md.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Read a torch state dict (or a module / {"state_dict": ...} checkpoint) as NumPy arrays."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.exit("convert_inception_weights.py: reading a .pth file needs PyTorch, which is not "
             "installed in this interpreter (" + sys.executable + "). Install torch (CPU is "
             "enough) in any environment, run the conversion there, and copy OUT.npz over; gpe_jax "
             "itself never needs torch.")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception:  # pylint: disable=broad-except
    # Full pickled modules are not loadable with weights_only; only do this for trusted files.
    obj = torch.load(path, map_location="cpu", weights_only=False)
  if isinstance(obj, torch.nn.Module):
    obj = obj.state_dict()
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    sys.exit(f"convert_inception_weights.py: {path} holds a {type(obj).__name__}, not a state dict")
  out = {}
  for name, value in obj.items():
    if isinstance(value, torch.Tensor):
      out[name] = value.detach().cpu().numpy()
  return out


def verify(npz_path: str) -> bool:
  """Load OUT.npz into the Flax model; returns False if gpe_jax cannot be imported here."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  try:
    from gpe_jax.evals import inception  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    print(f"note: not verified here ({e}); run `python scripts/convert_inception_weights.py "
          f"--check {npz_path}` with the interpreter that has jax/flax.")
    return False
  try:
    variables = inception.load_variables(npz_path)
  except ValueError as e:  # names the missing / unexpected / mis-shaped tensors
    sys.exit(f"verification failed: {e}")
  n_params = sum(int(np.prod(a.shape)) for a in _leaves(variables["params"]))
  n_stats = sum(int(np.prod(a.shape)) for a in _leaves(variables["batch_stats"]))
  print(f"verified: {npz_path} loads into gpe_jax.evals.inception.InceptionV3 "
        f"({n_params:,} parameters, {n_stats:,} BatchNorm statistics)")
  return True


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("paths", nargs="+", metavar="PATH", help="IN.pth OUT.npz, or OUT.npz "
                      "with --check")
  parser.add_argument("--check", action="store_true", help="only verify an existing .npz")
  args = parser.parse_args(argv)
  if args.check:
    if len(args.paths) != 1:
      parser.error("--check takes one path: OUT.npz")
    return 0 if verify(args.paths[0]) else 1
  if len(args.paths) != 2:
    parser.error("expected IN.pth OUT.npz")
  src, dst = args.paths
  if not dst.endswith(".npz"):
    parser.error(f"OUT must end in .npz (np.savez appends it otherwise), got {dst!r}")
  state_dict = load_torch_state_dict(src)
  with open(src, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  print(f"{src}: sha256 {sha}")
  if "6726825d" in os.path.basename(src) and not sha.startswith("6726825d"):
    print("warning: torch-hub file names carry their sha256 prefix; this file's hash does not "
          "start with 6726825d, so it may be corrupt or a different file.")
  np.savez(dst, **state_dict)
  print(f"wrote {dst}: {len(state_dict)} tensors")
  verify(dst)
  return 0


if __name__ == "__main__":
  sys.exit(main())
