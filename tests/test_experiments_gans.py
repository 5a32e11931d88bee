"""The GAN experiments (gan_robustness: Figs. 6-7, gan_ablation: Fig. 8, gan_critic: Prop. 2):
smoke runs through their command lines, and the arithmetic of their judgements.

The smoke runs compile more than they train (4 iterations), so the subprocesses run XLA:CPU
without its expensive optimisation passes (identical numbers here, half the wall time)."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import FAST_COMPILE, REPO, cli_env


def run_experiment(name, config, workdir, *overrides, timeout=420):
  env = cli_env()
  env["XLA_FLAGS"] = FAST_COMPILE
  res = subprocess.run([sys.executable, "-m", f"gpe_jax.experiments.{name}",
                        f"--config={config}", f"--workdir={workdir}",
                        "--config.experiments.workers=2", *overrides],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert res.returncode == 0, res.stderr[-4000:]
  with open(os.path.join(workdir, "numbers.json")) as f:
    numbers = json.load(f)
  with open(os.path.join(workdir, "report.md")) as f:
    report = f.read()
  return numbers, report


def finite(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def nonempty(workdir, fname):
  path = os.path.join(workdir, fname)
  return os.path.isfile(path) and os.path.getsize(path) > 0


def test_gan_robustness_smoke(tmp_path):
  wd = str(tmp_path / "robustness")
  methods, variants = ("gmegan", "gan"), ("conv_bn", "mlp")
  numbers, report = run_experiment(
      "gan_robustness", "configs/gmegan_digits.py:smoke", wd,
      f"--config.experiments.methods={methods!r}", f"--config.experiments.variants={variants!r}")
  assert numbers["methods"] == list(methods) and set(numbers["variants"]) == set(variants)
  for m in methods:
    for v in variants:
      r = numbers["runs"][m][v]
      assert r["diverged"] is False and r["steps"] == 4
      assert finite(r["fd_classifier_prior"]) and r["fd_classifier_prior"] >= 0
      assert 0 <= r["class_rel_std_prior"] <= 3.0 + 1e-9   # 10 classes: <= sqrt(9)
      assert os.path.isfile(os.path.join(wd, v, m, "sample", "samples.npz"))
    for k in ("fd_classifier_prior", "class_rel_std_prior"):
      st = numbers["stats"][k][m]
      assert st["n"] == 2 and st["diverged"] == 0
      assert all(finite(st[s]) for s in ("mean", "std", "min", "max"))
      assert st["min"] <= st["mean"] <= st["max"]
  # the variants are different networks
  assert json.load(open(os.path.join(wd, "mlp", "gan", "config.json")))["model"]["kind"] == "mlp"
  for k in ("fd_classifier_floor", "class_rel_std_floor"):
    assert finite(numbers["floor"][k]["mean"])
  for k in ("fd_classifier_prior", "class_rel_std_prior"):
    c = numbers["claims"][k]
    assert c["lowest_mean"] in methods and c["lowest_std"] in methods
    assert c["gmegan_lowest_mean"] == (c["lowest_mean"] == "gmegan")
  for fname in ("robustness.png", "samples_conv_bn.png"):
    assert nonempty(wd, fname) and fname in report
  assert "GMEGAN has the lowest mean classifier FD: " in report
  assert "fd_classifier_floor" in report


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
  """(workdir, numbers, report) of one smoke run of gan_ablation: one seed, GMEGAN and c_T = 0
  (the other two variants only change a weight the same way: test_ablation_variants)."""
  wd = str(tmp_path_factory.mktemp("gans") / "ablation")
  numbers, report = run_experiment("gan_ablation", "configs/gmegan_mixture.py:smoke", wd,
                                   "--config.experiments.seeds=(0,)",
                                   "--config.experiments.variants=('gmegan','c_T0')")
  return wd, numbers, report


def test_gan_ablation_smoke(ablation):
  wd, numbers, report = ablation
  variants = ("gmegan", "c_T0")
  assert numbers["kind"] == "mixture" and numbers["seeds"] == [0]
  assert set(numbers["runs"]) == set(variants) and not os.path.exists(os.path.join(wd, "k0"))
  assert numbers["primary"] == ["modes_covered", "high_quality", "kl_uniform",
                                "modes_covered_min_scheduled"]
  for v in variants:
    run = numbers["runs"][v]["0"]
    for k in ("modes_covered", "high_quality", "kl_uniform", "min_share", "max_share",
              "cm_identity_optimal", "gme_all_pairs", "weak_bilip_frac_a1.5",
              "modes_covered_min_scheduled"):
      assert finite(run[k]), (v, k, run.get(k))
    assert run["modes_covered_min_scheduled"] <= run["modes_covered"]
    assert finite(numbers["modes_covered_min_over_seeds_and_schedule"][v])
    assert numbers["diverged"][v] == 0
  cfgs = {v: json.load(open(os.path.join(wd, v, "seed0", "config.json")))["gmegan"]
          for v in variants}
  assert cfgs["c_T0"]["c_T"] == 0 and cfgs["gmegan"]["c_T"] > 0
  assert {k: v for k, v in cfgs["c_T0"].items() if k != "c_T"} == {
      k: v for k, v in cfgs["gmegan"].items() if k != "c_T"}
  assert set(numbers["judgement"]) == {"c_T0"}
  verdicts = {j["verdict"] for j in numbers["judgement"].values()}
  assert verdicts <= {"matters", "no measurable effect", "not judged (one seed)"}
  # one seed: a difference is not judged (no spread), so no overall yes
  assert numbers["each_regulariser_matters"] in (None, False)
  assert nonempty(wd, "ablation.png") and "Each regulariser matters: " in report


def test_gan_critic_smoke_reuses_the_ablation_runs(ablation, tmp_path):
  # gan_critic's runs are gan_ablation's 'gmegan' and 'c_T0' runs: copied, they are reused
  # (no stage trains again), and only the critic is measured.
  wd = str(tmp_path / "critic")
  for v in ("gmegan", "c_T0"):
    shutil.copytree(os.path.join(ablation[0], v, "seed0"), os.path.join(wd, v, "seed0"))
  before = os.path.getmtime(os.path.join(wd, "c_T0", "seed0", "gmegan", "done.json"))
  numbers, report = run_experiment("gan_critic", "configs/gmegan_mixture.py:smoke", wd,
                                   "--config.experiments.seeds=(0,)")
  assert os.path.getmtime(os.path.join(wd, "c_T0", "seed0", "gmegan", "done.json")) == before
  for v in ("gmegan", "c_T0"):
    run = numbers["runs"][v]["0"]
    for k in ("grad_heldout_q05", "grad_heldout_q50", "grad_heldout_q95", "grad_heldout_mean",
              "grad_generated_q50", "seg_lip_mean", "seg_lip_rel_mean", "diff_quot_mean",
              "gme_all_pairs",
              "weak_bilip_frac_a1.5"):
      assert finite(run[k]) and run[k] >= 0, (v, k, run.get(k))
    assert run["grad_heldout_q05"] <= run["grad_heldout_q50"] <= run["grad_heldout_q95"]
    assert run["step"] == 4 and run["num_heldout"] == 64   # smoke: eval_samples 64
  assert numbers["verdict"] == "not judged (one seed)"
  assert set(numbers["spearman_gme_vs"]) == {"seg_lip_mean", "grad_heldout_rel_spread",
                                             "seg_lip_rel_mean"}
  with np.load(os.path.join(wd, "critic_grad.npz")) as f:
    assert f["gmegan_heldout"].shape == (64,) and np.all(np.isfinite(f["c_T0_generated"]))
  assert nonempty(wd, "critic_grad.png") and "Prop. 2" in report


# ----------------------------------------------------------------------------------------------
# The judgements, on made-up numbers (no training).

def test_critic_measures_of_a_linear_critic():
  import jax.numpy as jnp
  from gpe_jax.experiments import gan_critic
  a = np.array([3.0, -4.0], np.float32)   # psi(x) = a . x: |grad psi| = 5 everywhere
  x = np.random.RandomState(0).normal(size=(50, 2)).astype(np.float32)
  out, raw = gan_critic.measure_critic(lambda v: v @ jnp.asarray(a), x, x[:20])
  for k in ("grad_heldout_q05", "grad_heldout_q95", "grad_generated_mean", "seg_lip_max",
            "seg_lip_mean"):
    assert math.isclose(out[k], 5.0, rel_tol=1e-5), k
  assert out["diff_quot_max"] <= 5.0 + 1e-4 and out["grad_heldout_rel_spread"] < 1e-5
  assert math.isclose(out["seg_lip_rel_mean"], 1.0, rel_tol=1e-5)
  assert raw["generated"].shape == (20,)


def test_ablation_variants():
  import importlib
  from gpe_jax.errors import ConfigError
  from gpe_jax.experiments import common, gan_ablation
  cfg = importlib.import_module("configs.gmegan_mixture").get_config()
  chosen = gan_ablation.selection(cfg)
  assert list(chosen) == ["gmegan", "c_T0", "k0", "c_R0"]
  g = cfg.gmegan
  for v, zero in (("c_T0", "c_T"), ("k0", "k"), ("c_R0", "c_R")):
    c = common.variant(cfg, **chosen[v]).gmegan
    assert c[zero] == 0 and g[zero] > 0
    assert all(c[k] == g[k] for k in ("c_T", "c_R", "c_G", "k", "p") if k != zero)
  with pytest.raises(ConfigError, match="k1"):
    gan_ablation.selection(common.variant(cfg, **{"experiments.variants": ("k1",)}))


def test_ablation_verdicts():
  from gpe_jax.experiments import common, gan_ablation

  def runs(vals):
    return {s: (None if v is None else {"modes_covered": v, "high_quality": 0.9,
                                        "kl_uniform": 0.01})
            for s, v in enumerate(vals)}
  per_run = {"gmegan": runs([12, 12, 12]), "c_T0": runs([8, 9, 7]), "k0": runs([12, 11, 12]),
             "c_R0": runs([12, None, 12])}
  out = gan_ablation.analyse(per_run, (0, 1, 2))
  assert out["kind"] == "mixture"
  j = out["judgement"]
  assert j["c_T0"]["verdict"] == "matters" and j["c_T0"]["worse_on"] == ["modes_covered"]
  assert j["k0"]["verdict"] == "no measurable effect"   # 1/3 mode: within 2 standard errors
  assert j["c_R0"]["verdict"] == "matters" and j["c_R0"]["more_diverged"]
  assert out["diverged"] == {"gmegan": 0, "c_T0": 0, "k0": 0, "c_R0": 1}
  one = gan_ablation.analyse({v: {0: r[0]} for v, r in per_run.items()}, (0,))
  assert one["judgement"]["c_T0"]["verdict"] == "not judged (one seed)"
  assert one["judgement"]["k0"]["verdict"] == "no measurable effect"   # 12 = 12
  s = common.spread([1.0, None, float("nan"), 3.0])
  assert s == {"mean": 2.0, "std": math.sqrt(2.0), "min": 1.0, "max": 3.0, "n": 2}


def test_robustness_claims_and_selection():
  import importlib
  from gpe_jax.errors import ConfigError
  from gpe_jax.experiments import common, gan_robustness
  stats = {k: {"gmegan": dict(common.spread([1.0, 1.1]), diverged=0),
               "gan": dict(common.spread([0.5, 3.0]), diverged=0)}
           for k in gan_robustness.METRICS}
  c = gan_robustness.claims(stats, ("gmegan", "gan"))["fd_classifier_prior"]
  assert c["lowest_mean"] == "gmegan" and c["gmegan_lowest_mean"] is True
  assert c["lowest_std"] == "gmegan" and c["gmegan_rank_mean"] == 1
  cfg = importlib.import_module("configs.gmegan_digits").get_config()
  methods, chosen = gan_robustness.selection(cfg)
  assert len(methods) == 7 and len(chosen) >= 5
  wide = chosen["conv_wide"]
  assert wide["model.dec_features"] == tuple(2 * f for f in cfg.model.dec_features)
  # every variant builds every method's networks, and each variant is another architecture
  import jax
  from gpe_jax.stages import gans
  sizes = {}
  for v, ov in chosen.items():
    c, total = common.variant(cfg, **ov), 0
    for m in methods:
      mods, txs = gans.build(c, m, (8, 8, 1))
      state = jax.eval_shape(gans.make_init_fn(m, mods, txs, (8, 8, 1), 10),
                             jax.random.key(0))
      total += sum(x.size for x in jax.tree.leaves(state.params))
    sizes[v] = total
  assert len(set(sizes.values())) == len(sizes), sizes
  bad = common.variant(cfg, **{"experiments.variants": ("conv_bn", "resnet")})
  with pytest.raises(ConfigError, match="resnet"):
    gan_robustness.selection(bad)


def test_digits_gan_config():
  import importlib
  import jax
  from gpe_jax.stages import gans
  mod = importlib.import_module("configs.gmegan_digits")
  full, smoke, short = mod.get_config(), mod.get_config("smoke"), mod.get_config("1000")
  assert "--config=configs/gmegan_digits.py" in mod.__doc__
  for c in (full, smoke, short):
    assert c.method == "gmegan" and tuple(c.stages) == ("gmegan", "sample", "evaluate")
    assert c.data.name == "digits" and c.model.kind == "conv"
    assert tuple(c.evaluate.extractors) == ("classifier", "pixels")
  g = full.gmegan   # the paper's CIFAR-10 weights, batch 64
  assert (g.c_T, g.c_G, g.c_R, g.k, g.p, full.data.batch_size) == (10, 1, 0.5, 1, 2, 64)
  assert {full[m].num_steps for m in gans.NAMES} == {2000}
  assert {short[m].num_steps for m in gans.NAMES} == {1000}
  assert smoke.gmegan.num_steps == 4 and smoke.data.batch_size % 8 == 0
  for m in gans.NAMES:
    mods, txs = gans.build(smoke, m, (8, 8, 1))
    state = jax.eval_shape(gans.make_init_fn(m, mods, txs, (8, 8, 1), 10), jax.random.key(0))
    assert set(state.params) == set(gans.nets_of(m, smoke[m]))
  with pytest.raises(ValueError, match="smoke"):
    mod.get_config("smkoe")
