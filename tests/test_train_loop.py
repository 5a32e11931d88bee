"""The shared loop in-process: NaN guard, target-loss stop, logging rows."""
import json
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from gpe_jax import logs, parallel, train_loop


def tiny_stage(tmp_path, loss_of_step, target_loss=0.0, eval_values=None, num_steps=6):
  tx = optax.sgd(0.1)

  def init_fn(key):
    return train_loop.new_state(key, {"w": jnp.ones((3,))}, {}, tx)

  def step_fn(state, batch):
    loss = loss_of_step(state.step) + 0.0 * jnp.sum(state.params["w"]) + 0.0 * batch["x"].sum()
    return state.replace(step=state.step + 1), {"loss": loss}

  cfg = ConfigDict(dict(num_steps=num_steps, log_every=1, eval_every=2, checkpoint_every=2,
                        keep_checkpoints=2, target_loss=target_loss, progress_bar=False))
  values = iter(eval_values or [])
  stage = train_loop.Stage(name="toy", cfg=cfg, init_fn=init_fn, step_fn=step_fn,
                           batch_fn=lambda step: {"x": np.zeros((8, 2), np.float32)},
                           eval_fn=(lambda s: {"val_loss": next(values)}) if eval_values else None,
                           target_key="val_loss")
  return stage


def test_nan_guard_names_stage_and_step(tmp_path):
  stage = tiny_stage(tmp_path, lambda s: jnp.where(s >= 3, jnp.nan, 1.0))
  writer = logs.MetricsWriter(str(tmp_path))
  with pytest.raises(train_loop.NonFiniteError, match=r"Stage 'toy'.*nan at step 4"):
    train_loop.run(stage, str(tmp_path), parallel.make_mesh(1), writer, seed=0)
  writer.close()
  # the checkpoint before the NaN is kept, none after it
  with __import__("orbax.checkpoint").checkpoint.CheckpointManager(
      str(tmp_path / "toy" / "checkpoints")) as mngr:
    assert mngr.latest_step() == 2


def test_target_loss_stops_early(tmp_path):
  stage = tiny_stage(tmp_path, lambda s: jnp.float32(1.0), target_loss=0.5,
                     eval_values=[0.9, 0.4, 0.1])
  writer = logs.MetricsWriter(str(tmp_path))
  result = train_loop.run(stage, str(tmp_path), parallel.make_mesh(8), writer, seed=0)
  writer.close()
  assert result.stopped_by == "target_loss" and result.steps == 4
  assert result.eval_metrics == {"val_loss": 0.4}
  rows = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
  assert all(r["stage"] == "toy" for r in rows)
