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


def test_metrics_rows_carry_wall_clock_columns(tmp_path):
  import time
  stage = tiny_stage(tmp_path, lambda s: jnp.float32(1.0), eval_values=[0.9, 0.8, 0.7])
  writer = logs.MetricsWriter(str(tmp_path))
  t0 = time.time()
  train_loop.run(stage, str(tmp_path), parallel.make_mesh(1), writer, seed=0)
  writer.close()
  rows = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert rows and all(set(logs.CLOCK_KEYS) <= set(r) for r in rows)
  assert all(t0 <= r["time"] <= time.time() for r in rows)
  elapsed = [r["elapsed_s"] for r in rows]
  assert elapsed == sorted(elapsed) and elapsed[0] >= 0
  assert all(isinstance(r["time"], float) for r in rows)


class _RecordingBar(train_loop.tqdm):
  """The loop's progress bar, keeping what it showed last (``format_dict``) when closed."""
  shown: list = []

  def close(self):
    if not self.disable:
      _RecordingBar.shown.append(dict(self.format_dict))
    super().close()


def test_progress_bar_clock_starts_after_the_compiled_first_step(tmp_path, monkeypatch):
  """Compilation (here: a 2 s sleep while the step is traced) is not in the bar's elapsed time,
  so its rate and ETA are those of training; a resumed run counts on from its checkpoint."""
  import time
  monkeypatch.setattr(train_loop, "tqdm", _RecordingBar)
  _RecordingBar.shown = []

  def slow_to_compile(s):
    time.sleep(2.0)   # runs once per trace, i.e. in the first (compiling) call only
    return jnp.float32(1.0)

  for num_steps in (6, 8):   # then resumed from the checkpoint of step 6
    stage = tiny_stage(tmp_path, slow_to_compile, num_steps=num_steps)
    stage.cfg.progress_bar = True
    writer = logs.MetricsWriter(str(tmp_path))
    t0 = time.perf_counter()
    train_loop.run(stage, str(tmp_path), parallel.make_mesh(1), writer, seed=0)
    wall = time.perf_counter() - t0
    writer.close()
    shown = _RecordingBar.shown[-1]
    assert shown["n"] == num_steps and shown["total"] == num_steps
    assert shown["initial"] == (0 if num_steps == 6 else 6)
    assert shown["elapsed"] < wall - 1.8, (shown["elapsed"], wall)
