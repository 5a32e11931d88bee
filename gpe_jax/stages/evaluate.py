"""Evaluation stage: how good are the generated images, and against what? (PAPERS §3)

Every comparison is against the held-out split (``x_test[:num_reference]``, the reference),
in each feature space of ``config.evaluate.extractors`` (classifier, pixels, inception):

  set       what it is                                                     n
  prior     GPE samples: noise -> flow prior -> decoder (sample/samples.npz) num_samples
  noprior   the decoder applied to N(0, I) directly, without the prior      num_samples
  recon     reconstructions S(T(x)) of training examples                    num_samples
  floor     real training examples (real vs real: the best one can hope)   num_samples

(num_samples is capped by the training-set size.) For a method whose decoder is a noise
generator (a GAN, ``stages/gans.py``), ``prior`` is its samples G(z), z ~ N(0, I) (no flow),
``noprior`` is absent (it would be the same set), and ``recon`` is G(T(x)) where the method has
an encoder T. With the classifier extractor on labelled data the stage also reports the
mode-collapse measure of the GMEGAN paper, ``class_rel_std_<set>``: the relative standard
deviation of the classifier's class counts over a set (0 = balanced classes). For each set and extractor the stage reports
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

  generate, _, velocity, _, autoencoder = common.load_generator(ctx)
  direct = velocity is None   # a GAN's G(z)
  x_prior, prior_source = _samples(ctx, n, generate)
  decode = autoencoder.decode_fn
  bsz = int(cfg.sample.batch_size)
  gen = rng.stream(cfg.seed, "evaluate.sets")
  z_noise = gen.standard_normal((n, cfg.model.latent_dim)).astype(np.float32)
  floor_idx = np.sort(gen.permutation(n_train)[:n])
  x_floor = data.x_train[floor_idx]
  sets = {"prior": x_prior}
  if not direct:
    sets["noprior"] = common.batched_apply(decode, z_noise, bsz)
  if autoencoder.embed_fn is not None:
    sets["recon"] = common.batched_apply(decode, autoencoder.encode(x_floor), bsz)
  sets["floor"] = x_floor

  flat, records, extractors = {}, {}, {}
  for name in ecfg.extractors:
    ext = features.get_extractor(name, data, ecfg)
    f, r = quality.compare_sets(ext, reference, sets, pr_k=int(ecfg.pr_k),
                                pr_samples=int(ecfg.pr_samples),
                                reference_name=f"held-out split, first {n_ref}")
    flat.update(f)
    records.update(r)
    extractors[name] = dict(ext.info, dim=ext.dim)
    logging.info("evaluate [%s]: FD %s", name, " | ".join(
        f"{s} {f[f'fd_{name}_{s}']:.4g}" for s in sets))
    if ext.classify is not None and data.num_classes:
      flat.update(class_balance(ext, sets, data.num_classes))
  protocol = {
      "reference": f"held-out split (x_test[:{n_ref}])", "n_reference": n_ref,
      "n_samples": n, "pr_k": int(ecfg.pr_k),
      "pr_points_per_set": min(int(ecfg.pr_samples), n, n_ref),
      "sets": {k: v for k, v in {
          "prior": (f"{autoencoder.method} samples: G(z), z ~ N(0, I); {prior_source}"
                    if direct else
                    f"{autoencoder.method} samples: N(0,I) -> flow prior -> decoder; "
                    f"{prior_source}"),
          "noprior": "decoder applied to N(0, I) in the normalised latent space",
          "recon": f"decoder(encoder(x)) of {n} random training examples",
          "floor": f"{n} random real training examples"}.items() if k in sets},
      "extractors": extractors, "method": autoencoder.method,
      "prior_steps": (common.read_done(os.path.join(ctx.workdir, "prior")) or {}).get("steps")}
  if logs.is_main_process():
    logs.write_json(os.path.join(out_dir, "metrics.json"),
                    {"records": records, "protocol": protocol})
  k = min(32, n)
  if "noprior" in sets:
    plots.paired_grid(x_prior[:k], sets["noprior"][:k],
                      os.path.join(out_dir, "prior_vs_noprior.png"), nrow=8,
                      titles=("with the flow prior: N(0, I) -> prior -> decoder",
                              "without: decoder on N(0, I)"),
                      title=f"{data.name}: {k} generated samples each")
  return common.mark_done(ctx, NAME, summary=dict(flat, protocol=protocol))


def class_balance(ext, sets: dict, num_classes: int) -> dict:
  """``class_rel_std_<set>``: the relative std of the classifier's class counts over each set
  (the GMEGAN paper's mode-collapse measure; ``gpe_jax.evals.modes.class_relative_std``)."""
  from gpe_jax.evals import modes
  return {f"class_rel_std_{s}": modes.class_relative_std(np.asarray(ext.classify(x)),
                                                          num_classes)
          for s, x in sets.items()}


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
