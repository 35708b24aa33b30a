"""`make bench`: CP-Mobile DCASE25 train-step and frontend throughput on the available devices.

Batch 64 of 1-s clips at 32 kHz (256 mel × 65 frames), float32, the training configuration of
configs/cp_mobile_dcase25.py (AdamW, frontend augmentation on). Prints the median over timed
repetitions after warm-up, with versions and the device. The PyTorch reference (CPJKU DCASE25
baseline, 2 threads on a 2-core CPU) takes about 325 ms per step (≈195 samples/s) and 60–75 ms per
64 clips for its frontend (../shared/reference/models_and_frontends.md §9).

    python benchmarks/bench.py [--batch 64] [--repeats 10]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import cp_mobile_dcase25  # noqa: E402
from jax_asc.audio import frontends  # noqa: E402
from jax_asc.data import pipeline  # noqa: E402
from jax_asc.data.dataset import Split  # noqa: E402
from jax_asc.stages import common  # noqa: E402
from jax_asc.train import loop, mesh as mesh_lib  # noqa: E402

REFERENCE_STEP_MS = 325.0
REFERENCE_FRONTEND_MS = (60.0, 75.0)


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append((time.perf_counter() - start) * 1000)
  return statistics.median(times)


def _pipeline_throughput(batch: int, num_clips: int = 4096) -> float:
  """Clips/s of the tf.data training pipeline over a float16 cache of 1-s clips at 32 kHz."""
  rng = np.random.default_rng(1)
  split = Split(name="bench", waveform=(rng.standard_normal((num_clips, 32000)) * 0.1
                                        ).astype(np.float16),
                label=rng.integers(0, 10, num_clips).astype(np.int32),
                device=np.zeros(num_clips, np.int32),
                filename=np.array([f"{i}.wav" for i in range(num_clips)]),
                index=np.arange(num_clips, dtype=np.int32), classes=tuple(map(str, range(10))),
                devices=("a",), sample_rate=32000)
  batches = pipeline.train_batches(split, global_batch=batch, seed=0, num_epochs=2)
  next(batches)
  start, clips = time.perf_counter(), 0
  for local in batches:
    clips += len(local["waveform"])
  return clips / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  batch = args.batch

  config = cp_mobile_dcase25.get_config()
  config.batch_size = batch
  rng = np.random.default_rng(0)
  local = dict(waveform=(rng.standard_normal((batch, 32000)) * 0.1).astype(np.float32),
               label=rng.integers(0, 10, batch).astype(np.int32),
               device=np.zeros(batch, np.int32), index=np.arange(batch, dtype=np.int32),
               mask=np.ones(batch, bool))

  split = Split(name="bench", waveform=local["waveform"], label=local["label"],
                device=local["device"], filename=np.array([f"{i}.wav" for i in range(batch)]),
                index=local["index"], classes=tuple(map(str, range(10))), devices=("a",),
                sample_rate=32000)
  task = common.classification_task(config, split)
  data = loop.TrainData(steps_per_epoch=1000, batches=lambda start: iter([local]))
  run = loop.setup(task, config, data)
  trainer = run.trainer
  device_batch = mesh_lib.global_batch(local, trainer.mesh)
  holder = {"state": run.state}

  def train_step():
    holder["state"], metrics = trainer.train_step(holder["state"], device_batch)
    return metrics["loss"]

  settings = frontends.settings_from_config(config.frontend)
  frontend = jax.jit(lambda w: frontends.log_mel(w, settings))
  waveform = device_batch["waveform"]

  step_ms = _median_ms(train_step, args.repeats)
  frontend_ms = _median_ms(lambda: frontend(waveform), args.repeats)
  pipeline_clips_per_s = _pipeline_throughput(batch)

  device = jax.devices()[0]
  print(f"jax {jax.__version__} | jaxlib {jax.lib.__version__ if hasattr(jax.lib, '__version__') else ''}"
        f" | flax {__import__('flax').__version__} | optax {__import__('optax').__version__}"
        f" | python {platform.python_version()}")
  print(f"device: {jax.device_count()} × {device.platform} ({device.device_kind}), "
        f"{os.cpu_count()} CPU cores")
  print(f"CP-Mobile DCASE25 train step (frontend + forward + backward + AdamW), batch {batch}: "
        f"{step_ms:.1f} ms/step = {batch / step_ms * 1000:.0f} samples/s "
        f"(PyTorch reference ≈{REFERENCE_STEP_MS:.0f} ms, ×{REFERENCE_STEP_MS / step_ms:.2f})")
  print(f"frontend (log-mel 4096/3072/500, 256 mels), batch {batch}: {frontend_ms:.1f} ms = "
        f"{batch / frontend_ms * 1000:.0f} clips/s "
        f"(PyTorch reference {REFERENCE_FRONTEND_MS[0]:.0f}–{REFERENCE_FRONTEND_MS[1]:.0f} ms)")
  print(f"input pipeline (tf.data, float16 cache, 1-s clips), batch {batch}: "
        f"{pipeline_clips_per_s:.0f} clips/s (the train step consumes "
        f"{batch / step_ms * 1000:.0f} clips/s)")


if __name__ == "__main__":
  main()
