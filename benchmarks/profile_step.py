"""Where a CP-Mobile training step's time goes on this machine: per native kernel (FFI target)
and per XLA thunk, from a `jax.profiler` trace of a few steps.

    python benchmarks/profile_step.py [dcase25|dcase23] [--batch 64] [--steps 5] [--top 40]

Prints the step time, then for each FFI target (summed over its calls) and each XLA thunk the
milliseconds per step as traced: the wall time of each call on the thread that ran it, so
kernels that split their work over the thread pool count once, and thunks that XLA runs side
by side each count in full (the column adds up to more than the step).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jax_asc.native import allocator  # noqa: E402

allocator.retain_freed_memory()

import jax  # noqa: E402

import bench  # noqa: E402
from jax_asc import native  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("variant", nargs="?", default="dcase25", choices=sorted(bench.CONFIGS))
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--top", type=int, default=40)
  args = parser.parse_args()
  print(native.summary())
  trainer, state, batch = bench.jax_step_parts(args.variant, args.batch)
  holder = {"state": state}

  def step():
    holder["state"], metrics = trainer.train_step(holder["state"], batch)
    jax.block_until_ready(metrics["loss"])

  # FFI calls are named by their HLO instruction: map those names to the kernels' targets.
  text = trainer._train.lower(state, batch, trainer._frozen).compile().as_text()
  targets = dict(re.findall(r"%?([\w.\-]+) = .*?custom_call_target=\"(\w+)\"", text))
  bench._warm_up_until_steady(step)
  start = time.perf_counter()
  for _ in range(args.steps):
    step()
  step_ms = (time.perf_counter() - start) / args.steps * 1000
  print(f"{args.variant}, batch {args.batch}: {step_ms:.0f} ms per step (untraced)")
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(args.steps):
        step()
    trace = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)[0]
    events = json.load(gzip.open(trace))["traceEvents"]
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  per_op, calls = collections.Counter(), collections.Counter()
  for e in events:
    thread = threads.get((e.get("pid"), e.get("tid")), "")
    if e.get("ph") != "X" or not ("Eigen" in thread or "PjRtCpuClient" in thread):
      continue
    if e["name"].startswith(("ThunkExecutor", "end: ", "Threadpool", "SlinkyThreadPool")):
      continue
    name = targets.get(e["name"], e["name"])
    per_op[name] += e["dur"] / 1000 / args.steps
    calls[name] += 1 / args.steps
  print("\n| op (FFI target or XLA thunk) | calls per step | ms per step |\n|---|---:|---:|")
  native_ms = sum(ms for name, ms in per_op.items() if name.startswith("jax_asc_"))
  print(f"native kernels {native_ms:.1f} ms, XLA thunks {sum(per_op.values()) - native_ms:.1f} ms "
        "per step (as traced)")
  for name, ms in per_op.most_common(args.top):
    print(f"| {name} | {calls[name]:.0f} | {ms:.2f} |")


if __name__ == "__main__":
  main()
