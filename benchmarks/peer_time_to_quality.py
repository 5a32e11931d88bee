"""The PyTorch side of ``time_to_quality.py``: the GPE paper's recipe, written from the paper.

Encoder: 5x5 stride-2 convs 32-64-128 with LeakyReLU(0.2), BatchNorm after the first and third,
a linear map to the 30-D latent. Decoder: 4x4 transposed convs (1 -> 4, then stride 2 to 8, 16,
32), each followed by LeakyReLU(0.2) and a 5x5 conv with BatchNorm, a final 5x5 conv and tanh.
Adam betas (0.5, 0.999), batch 100, the given lr with cosine decay over ``--max_steps``. The
data, batch indices, thresholds and clock rules are those of ``time_to_quality.py`` (which
starts this script; it needs torch and NumPy only).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from time_to_quality import (BATCH, HELD_OUT_BATCHES, batch_indices,  # noqa: E402
                             train_until)   # (the module imports NumPy only)

LATENT = 30


def sq_dists(a):
  a2 = (a * a).sum(1, keepdim=True)
  return (a2 + a2.T - 2.0 * a @ a.T).clamp_min(0.0)


def gme(x, z):
  x, z = x.reshape(len(x), -1), z.reshape(len(z), -1)
  return ((torch.log1p(sq_dists(z)) - torch.log1p(sq_dists(x))) ** 2).mean()


def encoder():
  def block(i, o, bn):
    return [nn.Conv2d(i, o, 5, 2, 2), nn.LeakyReLU(0.2)] + ([nn.BatchNorm2d(o)] if bn else [])
  return nn.Sequential(*block(1, 32, True), *block(32, 64, False), *block(64, 128, True),
                       nn.Flatten(), nn.Linear(128 * 4 * 4, LATENT))


def decoder():
  return nn.Sequential(
      nn.Unflatten(1, (LATENT, 1, 1)),
      nn.ConvTranspose2d(LATENT, 128, 4, 1, 0), nn.LeakyReLU(0.2),
      nn.Conv2d(128, 128, 5, 1, 2), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
      nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.LeakyReLU(0.2),
      nn.Conv2d(64, 64, 5, 1, 2), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
      nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.LeakyReLU(0.2),
      nn.Conv2d(32, 32, 5, 1, 2), nn.BatchNorm2d(32), nn.LeakyReLU(0.2),
      nn.ConvTranspose2d(32, 128, 4, 2, 1), nn.LeakyReLU(0.2),
      nn.Conv2d(128, 1, 5, 1, 2), nn.Tanh())


def optimiser(params, lr, steps):
  opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps)))
  return opt, sched


def torch_until(net, loss_fn, evaluate, rows, idx, lr, threshold, check_every, max_steps, n,
                to_end=False):
  """``time_to_quality.train_until`` over n Adam steps of ``net`` on ``loss_fn(rows[idx[i]])``
  (cosine decay over ``max_steps``); evaluation in eval mode without gradients."""
  opt, sched = optimiser(net.parameters(), lr, max_steps)

  def run_step(i):
    net.train()
    opt.zero_grad(set_to_none=True)
    loss_fn(rows[idx[i]]).backward()
    opt.step()
    sched.step()

  def held_out():
    net.eval()
    with torch.no_grad():
      return evaluate()
  return train_until(run_step, lambda: None, held_out, n, threshold, check_every, to_end)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data", required=True)
  p.add_argument("--lr", type=float, required=True)
  p.add_argument("--dec_lr", type=float, default=0.0, help="the decoder's lr (default: --lr)")
  p.add_argument("--enc_threshold", type=float, required=True)
  p.add_argument("--dec_threshold", type=float, required=True)
  p.add_argument("--max_steps", type=int, required=True)
  p.add_argument("--dec_max_steps", type=int, required=True)
  p.add_argument("--check_every", type=int, required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--to_end", action="store_true")
  args = p.parse_args()
  args.dec_lr = args.dec_lr or args.lr
  torch.manual_seed(args.seed)
  to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  x_train = to_nchw(np.load(os.path.join(args.data, "x_train.npy")))
  x_held = to_nchw(np.load(os.path.join(args.data, "x_held.npy")))
  idx = torch.from_numpy(batch_indices(len(x_train), args.max_steps, args.seed))
  held = x_held.reshape(HELD_OUT_BATCHES, BATCH, *x_held.shape[1:])

  T = encoder()
  enc = torch_until(T, lambda x: gme(x, T(x)),
                    lambda: torch.stack([gme(b, T(b)) for b in held]).mean(),
                    x_train, idx, args.lr, args.enc_threshold, args.check_every,
                    args.max_steps, len(idx), args.to_end)
  t0 = time.perf_counter()
  T.eval()
  with torch.no_grad():
    z_train = torch.cat([T(x_train[i:i + 1000]) for i in range(0, len(x_train), 1000)])
    z_held = T(x_held)
  encode_s = time.perf_counter() - t0
  S = decoder()
  pairs = torch.arange(len(x_train))
  dec = torch_until(S, lambda i: ((S(z_train[i]) - x_train[i]) ** 2).mean(),
                    lambda: ((S(z_held) - x_held) ** 2).mean(), pairs, idx, args.dec_lr,
                    args.dec_threshold, args.check_every, args.max_steps,
                    min(len(idx), args.dec_max_steps), args.to_end)
  print(json.dumps({"side": "torch", "lr": args.lr, "dec_lr": args.dec_lr, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "encoder": enc, "decoder": dec,
                    "encode_train_set_s": encode_s}))


if __name__ == "__main__":
  main()
