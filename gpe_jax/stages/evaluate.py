"""Evaluation stage: how good are the generated images, and against what? (PAPERS §3)

Every comparison is against the held-out split (``x_test[:num_reference]``, the reference),
in each feature space of ``config.evaluate.extractors`` (classifier, pixels, inception):

  set       what it is                                                     n
  prior     GPE samples: noise -> flow prior -> decoder (sample/samples.npz) num_samples
  noprior   the decoder applied to N(0, I) directly, without the prior      num_samples
  recon     reconstructions S(T(x)) of training examples                    num_samples
  floor     real training examples (real vs real: the best one can hope)   num_samples

(num_samples is capped by the training-set size.) For each set and extractor the stage reports
the Fréchet distance ``fd_<extractor>_<set>`` and k-NN precision/recall
``precision_<extractor>_<set>`` / ``recall_<extractor>_<set>``; ``summary["evaluate"]`` holds
those numbers and a ``protocol`` entry (extractors with their details — e.g. the classifier's
held-out accuracy and cache file — sample counts, reference split, integrator), and
``evaluate/metrics.json`` holds one record per number. ``evaluate/prior_vs_noprior.png`` shows
the two kinds of samples one above the other.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from gpe_jax import logs, plots, rng
from gpe_jax.evals import features, quality
from gpe_jax.stages import common

NAME = "evaluate"


def _samples(ctx: common.Context, n: int, generate):
  """n prior samples: from sample/samples.npz when the sample stage's record says it was made
  from the same prior, decoder and sampling settings and holds enough, else new ones."""
  cfg = ctx.config.sample
  sample_dir = os.path.join(ctx.workdir, "sample")
  rec = common.read_done(sample_dir)
  same = (rec is not None and rec.get("upstream") == ctx.provenance.get("upstream")
          and rec.get("inputs", {}).get("stage") == logs.to_jsonable(common.sample_inputs(
              ctx.config)))
  path = os.path.join(sample_dir, "samples.npz")
  if same and os.path.exists(path):
    with np.load(path) as f:
      if f["x"].shape[0] >= n:
        return f["x"][:n], f"sample/samples.npz ({cfg.method}, NFE {float(f['nfe']):.0f})"
  _, _, x, nfe = generate(n, ctx.config.seed)
  return x, f"generated here ({cfg.method}, NFE {nfe:.0f})"


def run(ctx: common.Context) -> dict:
  cfg, data = ctx.config, ctx.data
  ecfg = cfg.evaluate
  out_dir = ctx.stage_dir(NAME)
  n_train, n_test = data.x_train.shape[0], data.x_test.shape[0]
  n = min(int(ecfg.num_samples), n_train)
  n_ref = min(int(ecfg.num_reference), n_test)
  reference = data.x_test[:n_ref]

  generate, _, _, _, autoencoder = common.load_generator(ctx)
  x_prior, prior_source = _samples(ctx, n, generate)
  decode = autoencoder.decode_fn
  bsz = int(cfg.sample.batch_size)
  gen = rng.stream(cfg.seed, "evaluate.sets")
  z_noise = gen.standard_normal((n, cfg.model.latent_dim)).astype(np.float32)
  x_noprior = common.batched_apply(decode, z_noise, bsz)
  floor_idx = np.sort(gen.permutation(n_train)[:n])
  x_floor = data.x_train[floor_idx]
  x_recon = common.batched_apply(decode, autoencoder.encode(x_floor), bsz)
  sets = {"prior": x_prior, "noprior": x_noprior, "recon": x_recon, "floor": x_floor}

  flat, records, extractors = {}, {}, {}
  for name in ecfg.extractors:
    ext = features.get_extractor(name, data, ecfg)
    f, r = quality.compare_sets(ext, reference, sets, pr_k=int(ecfg.pr_k),
                                pr_samples=int(ecfg.pr_samples),
                                reference_name=f"held-out split, first {n_ref}")
    flat.update(f)
    records.update(r)
    extractors[name] = dict(ext.info, dim=ext.dim)
    logging.info("evaluate [%s]: FD prior %.4g | no prior %.4g | recon %.4g | floor %.4g",
                 name, f[f"fd_{name}_prior"], f[f"fd_{name}_noprior"], f[f"fd_{name}_recon"],
                 f[f"fd_{name}_floor"])
  protocol = {
      "reference": f"held-out split (x_test[:{n_ref}])", "n_reference": n_ref,
      "n_samples": n, "pr_k": int(ecfg.pr_k),
      "pr_points_per_set": min(int(ecfg.pr_samples), n, n_ref),
      "sets": {"prior": f"GPE samples: N(0,I) -> flow prior -> decoder; {prior_source}",
               "noprior": "decoder applied to N(0, I) in the normalised latent space",
               "recon": f"decoder(encoder(x)) of {n} random training examples",
               "floor": f"{n} random real training examples"},
      "extractors": extractors, "method": autoencoder.method,
      "prior_steps": (common.read_done(os.path.join(ctx.workdir, "prior")) or {}).get("steps")}
  if logs.is_main_process():
    logs.write_json(os.path.join(out_dir, "metrics.json"),
                    {"records": records, "protocol": protocol})
  k = min(32, n)
  plots.image_grid(np.concatenate([x_prior[:k], x_noprior[:k]]),
                   os.path.join(out_dir, "prior_vs_noprior.png"), nrow=8,
                   title=f"{data.name}: flow-prior samples (top {k // 8} rows) vs decoder on "
                         f"N(0, I) (bottom {k // 8} rows)")
  return common.mark_done(ctx, NAME, summary=dict(flat, protocol=protocol))


def inputs(config) -> dict:
  """The evaluation settings, and the sampling ones (samples may be generated here)."""
  return dict(config.evaluate.to_dict(), sample=common.sample_inputs(config))


def validate(config, data) -> None:
  """Extractor names, the Inception weights file (opened and checked), and label-trained
  features on unlabelled data, before any training."""
  features.validate_extractors(tuple(config.evaluate.extractors), data, config.evaluate,
                               "config.evaluate.extractors")


SPEC = common.StageSpec(
    name=NAME, run=run, consumes_method=True, needs=("prior",), inputs=inputs,
    upstream=common.generator_upstream, validate=validate, outputs=("metrics.json",),
    headline=("fd_classifier_prior", "fd_classifier_noprior", "fd_classifier_recon",
              "fd_classifier_floor", "fd_pixels_prior", "fd_pixels_noprior",
              "fd_thumbnail_prior", "fd_thumbnail_noprior", "fd_inception_prior",
              "fd_inception_noprior"))
