"""`make bench`: training-step, frontend and input-path throughput, beside PyTorch on this machine.

For the CP-Mobile DCASE25 (61,148 parameters, 256 mel × 65 frames) and DCASE23 (126,952, GRN,
256 × 64) configurations at batch 64 of 1-s clips at 32 kHz, float32:

* jax_asc train step: frontend (with its training augmentation) + forward + backward + update,
  the configs' optimizer (AdamW / Adam), on a batch already on the device; median ms.
* PyTorch (2.13.0 CPU, when installed): the same architecture in plain torch.nn
  (benchmarks/torch_reference.py), the same batch, threads and input: one step with torch.stft
  + mel frontend, and the model step alone (the reference's 325 ms figure is model-only).
* the frontend alone (log-mel, evaluation) both ways.
* the two input paths end to end over a synthetic split of float16 clips: tf.data (host
  gather → device → step) and accelerator path (split in accelerator memory, 8 steps per call).
* the two data sources (`data.source`): host batches per second from the files cache and from
  the TFDS records of the same synthetic scenes.
* memory: the train state's bytes on the device and the process's peak resident memory.
* report 004's M2D tagger (ViT-B/16, 10-s 4-channel mixtures, masked SD: auxiliary heads, EMA
  teacher, spatial-token masking in 4c): training mixtures/s of the 1c and 4c models at batch
  `--s5-batch` (random weights and mixtures; `--no-s5` skips it).

The two sides run in alternating rounds (jax_asc, then PyTorch, `--rounds` times, each the median
of `--repeats` steps): this machine's speed drifts by ±25 % within minutes, so a ratio is taken
within each round and the median over the rounds is printed.

    python benchmarks/bench.py [--batch 64] [--repeats 6] [--rounds 5] [--no-torch]
                               [--march native,x86-64-v3]

`--march`: the native kernels' build(s) to time, comma-separated (`-march` values; default
`native`, plus `x86-64-v3` on an AVX-512 machine so that the AVX2 build is timed there too);
each build runs in a process of its own, one after the other, each beside PyTorch.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jax_asc.native import allocator  # noqa: E402

allocator.retain_freed_memory()

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Optional  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import cp_mobile_dcase23, cp_mobile_dcase25  # noqa: E402
from jax_asc import native  # noqa: E402
from jax_asc.audio import frontends  # noqa: E402
from jax_asc.data.dataset import Split  # noqa: E402
from jax_asc.stages import common  # noqa: E402
from jax_asc.train import loop, mesh as mesh_lib, state as state_lib  # noqa: E402

CONFIGS = {"dcase25": cp_mobile_dcase25, "dcase23": cp_mobile_dcase23}
SAMPLES = 32000


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1000)
  return statistics.median(times)


def _split(num_clips: int, seed: int = 0) -> Split:
  rng = np.random.default_rng(seed)
  columns = dict(waveform=(rng.standard_normal((num_clips, 1, SAMPLES)) * 0.1).astype(np.float16),
                 label=rng.integers(0, 10, num_clips).astype(np.int32),
                 recording_device=np.zeros(num_clips, np.int32),
                 filename=np.array([f"{i}.wav" for i in range(num_clips)]),
                 index=np.arange(num_clips, dtype=np.int32))
  return Split(name="bench", columns=columns, classes=tuple(map(str, range(10))),
               devices=("a",), sample_rate=32000)


def _config(variant: str, batch: int, pipeline: str = "tf_data"):
  config = CONFIGS[variant].get_config()
  config.batch_size = batch
  config.data.pipeline = pipeline
  # The PyTorch step timed beside ours (torch_reference.py) has no Freq-MixStyle or time roll.
  config.mix.mixstyle_p = 0.0
  config.waveform_augment.roll_samples = 0
  return config


def jax_step_parts(variant: str, batch: int):
  """(trainer, initial train state, a batch on the device) for the variant's config."""
  config = _config(variant, batch)
  split = _split(batch)
  split, task = common.training_task(config, split)
  data = common.train_data(config, split, task.columns)
  run = loop.setup(task, config, data)
  return run.trainer, run.state, mesh_lib.global_batch(data.example_batch(), run.trainer.mesh)


def jax_train_step(variant: str, batch: int):
  """One jitted train step on a batch already on the device (a function to time, compiled and
  warmed up), and a function returning the current train state."""
  trainer, state, device_batch = jax_step_parts(variant, batch)
  holder = {"state": state}

  def step():
    holder["state"], metrics = trainer.train_step(holder["state"], device_batch)
    jax.block_until_ready(metrics["loss"])
  _warm_up_until_steady(step)
  return step, lambda: holder["state"]


def _warm_up_until_steady(step, most: int = 20) -> int:
  """Calls `step` (at least 3 times, at most `most`) until one call touches no new memory pages.

  The first steps grow the heap in jumps of hundreds of megabytes (XLA's temporary buffers do not
  yet fit the freed blocks); each jump costs tens of thousands of page faults, ~10 ms per step
  while it lasts. A training run spends almost all its steps after that, so that is what is
  timed. Returns the number of calls made."""
  for calls in range(1, most + 1):
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    if calls >= 3 and resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults < 100:
      break
  return calls


def jax_input_paths(variant: str, batch: int, steps: int = 24, clips: int = 1024):
  """Samples/s over `steps` training steps from a split of float16 clips, both input paths
  (after a warm-up that compiles each)."""
  split = _split(clips, seed=1)
  rates = {}
  for pipeline in ("tf_data", "accelerator"):
    config = _config(variant, batch, pipeline)
    config.data.steps_per_call = 8
    split_, task = common.training_task(config, split)
    data = common.train_data(config, split_, task.columns)
    run = loop.setup(task, config, data)
    trainer, state = run.trainer, run.state
    if pipeline == "tf_data":
      batches = data.batches(0)

      def advance(state, count, start):
        for _ in range(count):
          state, metrics = trainer.train_step(
              state, mesh_lib.global_batch(next(batches), trainer.mesh))
        return state, metrics
    else:
      arrays = trainer.put_accelerator_data(data.accelerator)

      def advance(state, count, start):
        for first in range(start, start + count, 8):
          rows = np.stack([data.accelerator.rows(s) for s in range(first, first + 8)])
          state, metrics = trainer.train_steps(state, data.accelerator.gather, arrays, rows, 8)
        return state, metrics
    state, metrics = advance(state, 8, 0)   # compile and warm up
    jax.block_until_ready(metrics["loss"])
    begin = time.perf_counter()
    state, metrics = advance(state, steps, 8)
    jax.block_until_ready(metrics["loss"])
    rates[pipeline] = steps * batch / (time.perf_counter() - begin)
    if pipeline == "tf_data":
      batches.close()
  return rates


def input_sources(batch: int, clips: int = 1024, batches: int = 48):
  """Clips/s of host training batches (`pipeline.train_batches`, no step) from the two data
  sources over the same synthetic scenes (1-s int16 clips): files (the cache, in memory) and
  tfds (the records of `tfds_builders`, read by row). Rendering and building take ~20 s."""
  import tempfile
  from configs import common as config_common
  from jax_asc import data as data_lib
  import tensorflow_datasets as tfds
  from jax_asc import build_tfds
  from jax_asc.data import pipeline
  tfds.disable_progress_bar()
  rates = {}
  with tempfile.TemporaryDirectory() as folder:
    cfg = config_common.base_config().data
    cfg.synthetic.update(num_train=clips, num_validation=batch, num_test=batch)
    cfg.update(cache_dir=folder, tfds_dir=os.path.join(folder, "tfds"))
    build_tfds.build(cfg, cfg.tfds_dir)
    for source in ("files", "tfds"):
      cfg.source = source
      split = data_lib.load_splits(cfg, ["train"])["train"]
      iterator = pipeline.train_batches(split, global_batch=batch, seed=0)
      next(iterator)
      begin = time.perf_counter()
      for _ in range(batches):
        next(iterator)
      rates[source] = batches * batch / (time.perf_counter() - begin)
      iterator.close()
  return rates


def torch_steps(batch: int):
  """PyTorch step functions per variant: (with frontend, model only, parameter count), and the
  frontend alone; None when torch is not installed."""
  if importlib.util.find_spec("torch") is None:
    return None
  import librosa
  import torch
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_reference as ref
  torch.set_num_threads(os.cpu_count() or 1)
  filterbank = librosa.filters.mel(sr=32000, n_fft=4096, n_mels=256, fmin=0.0, fmax=16000.0,
                                   htk=True, norm=None)
  frontend = ref.LogMel(filterbank.T)
  out = {"version": torch.__version__, "threads": torch.get_num_threads()}
  for variant, kwargs in ref.VARIANTS.items():
    model = ref.CPMobile(**kwargs).train()
    step, waveform = ref.train_step_fn(model, frontend, batch, SAMPLES)
    with torch.no_grad():
      features = frontend(waveform).unsqueeze(1)
    out[variant] = (step, ref.model_step_fn(model, features), ref.count_parameters(model))

  def frontend_only():
    with torch.no_grad():
      frontend(waveform)
  out["frontend"] = frontend_only
  return out


def side_by_side(ours, theirs, repeats: int, rounds: int):
  """Alternating rounds of `ours` and each of `theirs` (median ms of `repeats` calls each):
  (our median ms, [their median ms], [median over rounds of their ms / our ms])."""
  our_ms, their_ms = [], [[] for _ in theirs]
  for _ in range(rounds):
    our_ms.append(_median_ms(ours, repeats, warmup=1))
    for times, fn in zip(their_ms, theirs):
      times.append(_median_ms(fn, repeats, warmup=1))
  ratios = [statistics.median(t / o for t, o in zip(times, our_ms)) for times in their_ms]
  return statistics.median(our_ms), [statistics.median(t) for t in their_ms], ratios


def _default_marches() -> str:
  avx512 = "avx512f" in native.cpu_extensions().split()
  return "native,x86-64-v3" if avx512 else "native"


def s5_tagger(channels: int, batch: int, steps: int = 3) -> float:
  """Training mixtures/s of report 004's masked-SD M2D tagger at full size (ViT-B/16 over
  80 × 1001 log-mels, 1c or 4c) on random 10-s mixtures: frontend + student and EMA-teacher
  forward + backward + update, after one warm-up step."""
  from configs import report004_s5
  from jax_asc.data import s5_dcase
  from jax_asc.tasks import tagging
  role = "tagger_4c_sd" if channels == 4 else "tagger_1c_sd"
  config = report004_s5.get_config(f"{role},smoke")
  config.model = report004_s5.m2d_tagger(channels, aux_blocks=(9, 10),
                                         spatial_mask_rate=0.3 if channels == 4 else 0.0)
  config.batch_size = batch
  rng = np.random.default_rng(0)
  samples = 10 * SAMPLES
  columns = dict(waveform=(rng.standard_normal((batch, 4, samples)) * 0.01).astype(np.float32),
                 labels=rng.integers(0, 19, (batch, 3)).astype(np.int32),
                 filename=np.array([f"m{i}" for i in range(batch)]),
                 index=np.arange(batch, dtype=np.int32))
  split = Split(name="train", columns=columns, classes=s5_dcase.CLASSES, devices=(),
                sample_rate=SAMPLES, dataset="bench")
  task = tagging.build(config, split)
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  batch_arrays = mesh_lib.global_batch(
      {"waveform": columns["waveform"], "labels": columns["labels"],
       "mask": np.ones(batch, bool)}, mesh)
  setup = loop.setup(task, config, loop.TrainData(1, lambda start: iter([batch_arrays])),
                     mesh=mesh)
  state = setup.state
  state, metrics = setup.trainer.train_step(state, batch_arrays)   # compile + first step
  jax.block_until_ready(metrics)
  begin = time.perf_counter()
  for _ in range(steps):
    state, metrics = setup.trainer.train_step(state, batch_arrays)
  jax.block_until_ready(metrics)
  return steps * batch / (time.perf_counter() - begin)


def qwen_teacher_cache(mixtures: int, batch: int) -> dict:
  """Report 004 §2.3's teacher cache at full size: the Qwen2-Audio encoder (32 layers of width
  1280, random weights) over `mixtures` random 10-s mixtures' summed sources (a 30-s Whisper
  window, 500 of its 1500 positions run), built by `teachers.semantic.build` into a temporary
  folder: its figures (mixtures/s after one compiled batch, bytes per 1,000 mixtures, peak
  memory)."""
  import tempfile
  import ml_collections
  from jax_asc import teachers as teachers_lib
  from jax_asc.teachers import semantic
  rng = np.random.default_rng(0)
  samples = 10 * SAMPLES
  columns = dict(waveform=np.zeros((mixtures, 4, samples), np.float16),
                 sources=(rng.standard_normal((mixtures, 3, samples)) * 0.05).astype(np.float16),
                 metadata=np.array([json.dumps({"mixture": i}) for i in range(mixtures)]),
                 filename=np.array([f"m{i}" for i in range(mixtures)]),
                 index=np.arange(mixtures, dtype=np.int32))
  split = Split(name="train", columns=columns, classes=("a",), devices=(), sample_rate=SAMPLES,
                dataset="bench")
  spec = teachers_lib.specs(ml_collections.ConfigDict(
      {"teachers": {"qwen": {"source": "qwen_audio", "batch_size": batch}}}))["qwen"]
  teacher = semantic.load("qwen", spec)
  run = semantic.token_function(teacher, SAMPLES, samples)
  jax.block_until_ready(run(teacher.params, split.audio("sources", np.arange(batch) % mixtures)))
  with tempfile.TemporaryDirectory() as folder:
    meta = semantic.build(teacher, split, folder, batch, log=lambda _: None)
  return meta["build"]


def qwen_encoder_vs_torch(batch: int = 2, repeats: int = 2) -> Optional[dict]:
  """Seconds per batch of the full-size Qwen2-Audio encoder on a 10-s clip's 30-s Whisper window:
  `transformers`' `Qwen2AudioEncoder` (all 1500 positions, as it requires, with the valid-frame
  mask) and ours on the same converted random weights, on all positions and with
  keep_positions=500 (what the cache runs). None without torch and transformers."""
  if any(importlib.util.find_spec(m) is None for m in ("torch", "transformers")):
    return None
  import torch
  import transformers
  from jax_asc.models import convert, qwen_audio
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  config = transformers.Qwen2AudioEncoderConfig()
  config._attn_implementation = "sdpa"
  theirs = transformers.models.qwen2_audio.modeling_qwen2_audio.Qwen2AudioEncoder(config).eval()
  ours = qwen_audio.QwenAudioEncoder()
  params = convert.qwen_audio_params({k: v.numpy() for k, v in theirs.state_dict().items()},
                                     ours)
  features = np.random.default_rng(0).standard_normal((batch, 128, 3000)).astype(np.float32)
  valid = np.full(batch, 1000, np.int32)                                   # 10 s of 30
  len1, _ = qwen_audio.output_lengths(valid)
  mask = np.where(np.arange(1500)[None, :] < len1[:, None], 0.0, -np.inf).astype(np.float32)
  mask = torch.from_numpy(np.broadcast_to(mask[:, None, None, :], (batch, 1, 1500, 1500)).copy())
  x = torch.from_numpy(features)

  def run_theirs():
    with torch.no_grad():
      return theirs(x, attention_mask=mask).last_hidden_state
  out = {"torch_s": _median_ms(run_theirs, repeats, warmup=1) / 1000}
  del theirs
  for name, keep in (("jax_full_s", None), ("jax_keep_s", 500)):
    fn = jax.jit(lambda p, f, v, keep=keep: ours.apply({"params": p}, f, v, keep_positions=keep))
    out[name] = _median_ms(lambda: jax.block_until_ready(fn(params, features, valid)), repeats,
                           warmup=1) / 1000
  out.update(batch=batch, torch=torch.__version__, transformers=transformers.__version__)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=6)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--s5-batch", type=int, default=2)
  parser.add_argument("--no-s5", action="store_true")
  parser.add_argument("--qwen-mixtures", type=int, default=4,
                      help="report 004's Qwen2-Audio teacher cache: mixtures to build (0: skip)")
  parser.add_argument("--march", default=None,
                      help="comma-separated -march builds of the native kernels to time")
  args = parser.parse_args()
  marches = [m.strip() for m in (args.march or _default_marches()).split(",") if m.strip()]
  if len(marches) > 1:   # one process per build: a process registers one kernel library
    code = 0
    for march in marches:
      print(f"\n===== native kernels built with -march={march} =====", flush=True)
      argv = [f"--batch={args.batch}", f"--repeats={args.repeats}", f"--rounds={args.rounds}",
              f"--march={march}", f"--s5-batch={args.s5_batch}",
              f"--qwen-mixtures={args.qwen_mixtures}",
              *(["--no-torch"] if args.no_torch else []), *(["--no-s5"] if args.no_s5 else [])]
      code |= subprocess.call([sys.executable, os.path.abspath(__file__), *argv])
    sys.exit(code)
  os.environ["JAX_ASC_KERNEL_MARCH"] = marches[0]   # read when the kernels are first resolved
  batch, repeats, rounds = args.batch, args.repeats, args.rounds
  device = jax.devices()[0]
  print(f"jax {jax.__version__} | flax {__import__('flax').__version__} | optax "
        f"{__import__('optax').__version__} | python {platform.python_version()} | "
        f"{jax.device_count()} × {device.platform} ({device.device_kind}), {os.cpu_count()} CPU "
        f"cores\n{native.summary()}", flush=True)

  torch = None if args.no_torch else torch_steps(batch)
  rows, states = {}, {}
  for variant in CONFIGS:
    step, states[variant] = jax_train_step(variant, batch)
    theirs = torch[variant][:2] if torch else ()
    rows[variant] = side_by_side(step, theirs, repeats, rounds)
  settings = frontends.DCASE25
  waveform = jax.device_put(np.random.default_rng(2).standard_normal((batch, SAMPLES)
                                                                    ).astype(np.float32) * 0.1)
  log_mel = jax.jit(lambda w: frontends.log_mel(w, settings))
  frontend = side_by_side(lambda: jax.block_until_ready(log_mel(waveform)),
                          (torch["frontend"],) if torch else (), repeats * 3, rounds)
  rates = jax_input_paths("dcase25", batch)
  sources = input_sources(batch)
  s5 = {} if args.no_s5 else {c: s5_tagger(c, args.s5_batch) for c in (1, 4)}
  qwen = qwen_teacher_cache(args.qwen_mixtures, 2) if args.qwen_mixtures > 0 else None
  qwen_torch = None if args.no_torch or not qwen else qwen_encoder_vs_torch()

  print(f"\nTrain step, batch {batch}, float32 (frontend + forward + backward + update), medians "
        f"of {rounds} alternating rounds:")
  print("| model | jax_asc ms | samples/s | PyTorch ms (with frontend / model only) | ratio |")
  print("|---|---:|---:|---:|---:|")
  for variant, (ms, their_ms, ratios) in rows.items():
    row = f"| CP-Mobile {variant} | {ms:.0f} | {batch / ms * 1000:.0f} |"
    if torch:
      row += f" {their_ms[0]:.0f} / {their_ms[1]:.0f} | ×{ratios[0]:.2f} |"
    else:
      row += " (torch not installed) | |"
    print(row)
  frontend_ms, their_ms, ratios = frontend
  line = (f"\nFrontend (log-mel 4096/3072/500, 256 mels), {batch} clips: {frontend_ms:.1f} ms = "
          f"{batch / frontend_ms * 1000:.0f} clips/s")
  if torch:
    line += f"; PyTorch (torch.stft + mel matmul) {their_ms[0]:.1f} ms, ×{ratios[0]:.2f}"
  print(line)
  print(f"Input paths (dcase25, float16 clips, 24 steps): tf.data {rates['tf_data']:.0f} "
        f"samples/s, accelerator path (8 steps per call) {rates['accelerator']:.0f} samples/s")
  print(f"Data sources (host batches of {batch} 1-s int16 clips, no step): files (cache in memory) "
        f"{sources['files']:.0f} clips/s, tfds (ArrayRecord, read by row) {sources['tfds']:.0f} "
        f"clips/s")
  for channels, rate in s5.items():
    print(f"Report 004 M2D tagger ({channels}c, ViT-B/16, masked SD), 10-s mixtures, batch "
          f"{args.s5_batch}: {rate:.2f} training mixtures/s")
  if qwen:
    print(f"Report 004 Qwen2-Audio teacher cache (32 × 1280 encoder, random weights), 10-s "
          f"mixtures, batch 2: {qwen['mixtures_per_s']:.3f} mixtures/s, "
          f"{qwen['disk_bytes_per_1000'] / 2**20:.1f} MiB per 1,000 mixtures on disk "
          f"(tokens 32 × 1280 float16), peak host memory so far "
          f"{qwen['peak_rss_bytes'] / 1e9:.2f} GB")
  if qwen_torch:
    t = qwen_torch
    print(f"Qwen2-Audio encoder, batch {t['batch']} of 10-s clips in the 30-s window, s per "
          f"batch: transformers {t['transformers']} (torch {t['torch']}, all 1500 positions) "
          f"{t['torch_s']:.2f}; ours, all positions {t['jax_full_s']:.2f} "
          f"(×{t['torch_s'] / t['jax_full_s']:.2f}); ours, keep_positions=500 "
          f"{t['jax_keep_s']:.2f} (×{t['torch_s'] / t['jax_keep_s']:.2f})")
  for variant, state in states.items():
    print(f"Train state on the device ({variant}: params, batch stats, optimizer): "
          f"{state_lib.memory_bytes(state()) / 2**20:.2f} MB")
  stats = getattr(device, "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    print(f"Device peak memory in use: {stats['peak_bytes_in_use'] / 1e9:.2f} GB")
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB
  print(f"Peak host memory (resident) of this process: {peak / 1e9:.2f} GB")
  huge = allocator.huge_page_bytes()
  if huge is not None:
    print(f"Of it in transparent huge pages now: {huge / 1e9:.2f} GB (GLIBC_TUNABLES="
          f"{os.environ.get('GLIBC_TUNABLES', '')!r}; see jax_asc/native/allocator.py)")
  if torch:
    print(f"PyTorch {torch['version']}, {torch['threads']} threads, same batch and input.")


if __name__ == "__main__":
  main()
