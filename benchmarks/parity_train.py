"""End-to-end training parity: jax_asc and the PyTorch reference trained on the same data with
the same settings over several seeds; test accuracy of the last checkpoint, mean ± std.

    .venv/bin/python benchmarks/parity_train.py --dataset synthetic --seeds 5
    .venv/bin/python benchmarks/parity_train.py --dataset fsdd --seeds 5   # ../shared/data/fsdd

Ours is the real run (`jax_asc.main.run`: data pipeline, augmentation on the device, the train
step, the evaluate stage) of `configs/quickstart.py` (the synthetic default) or of the FSDD
settings below. The reference is a plain PyTorch loop as the DCASE25 baseline writes it:
`benchmarks/torch_reference.py` CP-Mobile (with the references' init), torchaudio
`MelSpectrogram` (periodic Hann, centred reflect, power 2, HTK, no norm) → `FrequencyMasking`
(iid, 4-D) on the power mel → log(x + 1e-5), AdamW, warm-up + cosine per step, the same batch
size, epochs, learning rate and steps per epoch (last partial batch dropped, as ours), fed the
same waveforms (read and resampled by `jax_asc.data`). Needs torch 2.13.0 and torchaudio (make
reference-deps). Prints a Markdown table and writes `<workdir>/parity.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
FSDD = os.path.join(ROOT, "..", "shared", "data", "fsdd")


def base_config(dataset: str):
  from configs import common, quickstart
  if dataset == "synthetic":
    return quickstart.get_config()
  config = common.base_config()
  # FSDD has no validation split and no recording locations to hold out; the reference selects
  # nothing and both sides test the last checkpoint, so validating on the test split only
  # logs it: an explicit opt-in (data.selection_split="test"; tables note such runs).
  config.data.update(name="fsdd", root=os.path.abspath(FSDD), sample_rate=8000,
                     train_split="train", validation_split="test", test_split="test",
                     selection_split="test")
  # 8 kHz digits padded to 2.5 s: 64 HTK mels of a 512-point STFT every 20 ms.
  config.frontend = common.frontend("dcase25", sample_rate=8000, n_fft=512, win_length=400,
                                    hop_length=160, n_mels=64)
  config.augment.freq_mask = 8
  config.batch_size, config.num_epochs = 64, 6
  config.optimizer.learning_rate = 0.005
  config.schedule.warmup_steps = 40
  config.eval_every_epochs = config.num_epochs   # once, at the end; the last checkpoint is tested
  config.log_every_steps = 20
  config.evaluate.batch_size = 128
  return config


def run_ours(config, workdir: str) -> dict:
  from jax_asc import main
  main.run(config, workdir)
  with open(os.path.join(workdir, "reports", f"{config.evaluate.split}.json")) as f:
    report = json.load(f)
  return {"accuracy": report["accuracy"], "macro_accuracy": report["macro_accuracy"]}


def run_reference(config, splits, seed: int) -> dict:
  import torch
  import torchaudio
  import torch_reference
  torch.manual_seed(seed)
  train, test = splits[config.data.train_split], splits[config.evaluate.split]
  fe = config.frontend
  mel = torchaudio.transforms.MelSpectrogram(
      sample_rate=fe.sample_rate, n_fft=fe.n_fft, win_length=fe.win_length,
      hop_length=fe.hop_length, f_min=fe.fmin, f_max=fe.fmax, n_mels=fe.n_mels, power=2.0,
      center=True, pad_mode="reflect", norm=None, mel_scale="htk")
  mask = torchaudio.transforms.FrequencyMasking(config.augment.freq_mask, iid_masks=True)

  def features(waveform, training):
    x = mel(waveform).unsqueeze(1)                 # (B, 1, mels, frames)
    if training and config.augment.freq_mask > 0:
      x = mask(x)
    return torch.log(x + fe.log_eps)

  m = config.model
  model = torch_reference.CPMobile(
      n_classes=len(train.classes), base_channels=m.base_channels,
      channels_multiplier=m.channels_multiplier, expansion_rate=m.expansion_rate,
      n_blocks=tuple(m.n_blocks), strides=tuple(tuple(s) for s in m.strides),
      use_grn=m.use_grn)
  o = config.optimizer
  opt = torch.optim.AdamW(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps,
                          weight_decay=o.weight_decay)
  steps_per_epoch = len(train) // config.batch_size
  total = steps_per_epoch * config.num_epochs
  scheduler = torch.optim.lr_scheduler.LambdaLR(
      opt, torch_reference.cosine_with_warmup(config.schedule.warmup_steps, total))
  waves = torch.from_numpy(train.audio()[:, 0])
  labels = torch.from_numpy(np.asarray(train["label"]).astype(np.int64))
  generator = torch.Generator().manual_seed(seed)
  model.train()
  for _ in range(config.num_epochs):
    order = torch.randperm(len(train), generator=generator)
    for step in range(steps_per_epoch):
      rows = order[step * config.batch_size:(step + 1) * config.batch_size]
      with torch.no_grad():
        x = features(waves[rows], training=True)
      opt.zero_grad(set_to_none=True)
      loss = torch.nn.functional.cross_entropy(model(x), labels[rows])
      loss.backward()
      opt.step()
      scheduler.step()
  model.eval()
  test_waves = torch.from_numpy(test.audio()[:, 0])
  predictions = []
  with torch.no_grad():
    for start in range(0, len(test), 128):
      predictions.append(model(features(test_waves[start:start + 128], False)).argmax(-1))
  predicted = torch.cat(predictions).numpy()
  truth = np.asarray(test["label"])
  per_class = [float(np.mean(predicted[truth == c] == c)) for c in np.unique(truth)]
  return {"accuracy": float(np.mean(predicted == truth)),
          "macro_accuracy": float(np.mean(per_class))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", choices=("synthetic", "fsdd"), default="synthetic")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "parity_train"))
  parser.add_argument("--sides", default="ours,reference")
  args = parser.parse_args()
  if args.dataset == "fsdd" and not os.path.isdir(FSDD):
    sys.exit(f"no FSDD folder at {FSDD}")
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  from jax_asc import data as data_lib
  from jax_asc import main as jax_main
  jax_main.enable_compilation_cache()
  workdir = os.path.join(args.workdir, args.dataset)
  os.makedirs(workdir, exist_ok=True)
  results = {"ours": [], "reference": []}
  path = os.path.join(workdir, "parity.json")
  if os.path.exists(path):
    with open(path) as f:
      results.update(json.load(f)["runs"])
  sides = args.sides.split(",")
  splits = None   # the data does not depend on the seed: read once
  for seed in range(args.seeds):
    config = base_config(args.dataset)
    config.seed = seed
    config.data.cache_dir = os.path.join(workdir, "cache")
    if "ours" in sides and not any(r["seed"] == seed for r in results["ours"]):
      t0 = time.time()
      out = run_ours(config, os.path.join(workdir, f"ours_seed{seed}"))
      results["ours"].append(dict(out, seed=seed, seconds=time.time() - t0))
      print(f"ours seed {seed}: {out} ({time.time() - t0:.0f} s)", flush=True)
    if "reference" in sides and not any(r["seed"] == seed for r in results["reference"]):
      t0 = time.time()
      if splits is None:
        splits = data_lib.load_splits(config.data, [config.data.train_split,
                                                    config.evaluate.split])
      out = run_reference(config, splits, seed)
      results["reference"].append(dict(out, seed=seed, seconds=time.time() - t0))
      print(f"reference seed {seed}: {out} ({time.time() - t0:.0f} s)", flush=True)
    with open(path, "w") as f:
      json.dump({"dataset": args.dataset, "runs": results}, f, indent=1)
  print(f"\n| {args.dataset} | seeds | accuracy % (mean ± std) | macro accuracy % |")
  print("|---|---:|---:|---:|")
  for side in ("ours", "reference"):
    runs = results[side]
    if not runs:
      continue
    acc = 100 * np.array([r["accuracy"] for r in runs])
    macro = 100 * np.array([r["macro_accuracy"] for r in runs])
    name = "jax_asc" if side == "ours" else "PyTorch reference"
    print(f"| {name} | {len(runs)} | {acc.mean():.2f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.2f}"
          f" | {macro.mean():.2f} ± {macro.std(ddof=1) if len(macro) > 1 else 0:.2f} |")


if __name__ == "__main__":
  main()
