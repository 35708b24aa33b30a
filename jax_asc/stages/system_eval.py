"""Stage `system_eval`: report 004's tables 1 and 2 — each tagger run's labels query the
separator, and the system is scored with CAPI-SDRi and the label accuracies.

This run is the separator's evaluation (`config.task = "separation"`, `config.model` its
ResUNetK). Its weights come from `system.separator_run` (a separator run's `system.checkpoint`
checkpoint) or `system.separator_checkpoint` (the released T4 checkpoint, `.ckpt`/`.pth` with
PyTorch or its `.npz`). `system.taggers` names the rows: "1c/baseline=RUN,1c/masked_sd=RUN,
4c/…", each a tagger run whose `predict` stage cached `track_logits` on `system.split` (the
development test set; the same split this run loads). Per row, per mixture: the tagger's K
labels (argmax per track, silent tracks moved last as the baseline does; silence is dropped by
the metric), the separator queried with them, and
CAPI-SDRi against the dry targets (`s5_metrics`, mixtures naming no class on either side
excluded), mixture- and source-level label accuracy. An "oracle" row queries the separator with
the reference labels (the separator's own ceiling).

Writes `<workdir>/reports/system_eval.{json,md}`: per track (1c, 4c) our rows beside the
report's (`REPORTED`).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import jax
import numpy as np

from jax_asc.eval import evaluators, s5_metrics
from jax_asc.stages import common
from jax_asc.teachers import cache as cache_lib
from jax_asc.teachers import online

# Report 004, tables 1 and 2 (development test set, the released ResUNetK): CAPI-SDRi (dB),
# mixture- and source-level label accuracy (%).
REPORTED = {
    "1c": {"baseline": (8.171, 57.143, 67.147), "masked_sd": (8.354, 58.069, 68.311),
           "semantic_kd": (8.557, 60.053, 70.019)},
    "4c": {"baseline": (8.489, 60.714, 70.394), "masked_sd": (8.546, 60.053, 70.293),
           "semantic_kd": (8.807, 61.442, 72.535)},
}
ORACLE = "oracle"


def parse_rows(spec: str) -> List[Tuple[str, str, str]]:
  """"1c/baseline=RUN,…" → [(track, system, run)]."""
  rows = []
  for item in [t.strip() for t in spec.split(",") if t.strip()]:
    name, sep, run = item.partition("=")
    track, slash, system = name.partition("/")
    if not sep or not slash or not run:
      raise ValueError(f"system.taggers item {item!r}: expected '<track>/<system>=<run>', "
                       f"e.g. 1c/masked_sd=workdirs/report004/taggers/tagger_1c_sd")
    rows.append((track, system, run))
  if not rows:
    raise ValueError("system.taggers is empty: name the tagger runs to evaluate")
  return rows


def tagger_labels(run: str, split) -> np.ndarray:
  """(N, K) labels (silence = the last class) from run `run`'s cached `track_logits` on
  `split`, in the split's order; the cache must have been made on this very split."""
  folder = cache_lib.predictions_dir(run, split.name)
  cache = cache_lib.load(folder)
  if cache.metadata.get("split_fingerprint") != cache_lib.split_fingerprint(split):
    raise cache_lib.CacheMismatchError(
        f"{folder} was predicted on another version of split {split.name!r} (its "
        f"split_fingerprint differs): re-run {run}'s predict stage on this data")
  logits = np.asarray(cache.output("track_logits"))[cache_lib.align(cache.filenames, split,
                                                                     folder)]
  if logits.shape[-1] != len(split.classes) + 1:
    raise ValueError(f"{folder}: track logits over {logits.shape[-1]} classes; the data has "
                     f"{len(split.classes)} + silence")
  return silence_last(evaluators.track_labels(logits).astype(np.int32), len(split.classes))


def silence_last(labels: np.ndarray, silence: int) -> np.ndarray:
  """(N, K) labels with the silent tracks moved to the end, the others in their order (the T4
  baseline's `S5.predict_label_separate` queries the separator so)."""
  order = np.argsort(labels == silence, axis=1, kind="stable")
  return np.take_along_axis(labels, order, axis=1)


def separator_variables(config):
  """{"params", "batch_stats"} of the separator (a run's checkpoint or the released file)."""
  from jax_asc.models import convert
  run, path = config.system.separator_run, config.system.separator_checkpoint
  if bool(run) == bool(path):
    raise ValueError("set exactly one of system.separator_run (a separator run) and "
                     "system.separator_checkpoint (the released ResUNetK checkpoint)")
  if run:
    return online.load_run(run, config.system.checkpoint, "system.checkpoint")[1]
  variables = convert.resunetk_params(convert.load_torch_state_dict(path))
  return {"params": {"separator": variables["params"]},
          "batch_stats": {"separator": variables["batch_stats"]}}


def score(inference, split, labels: np.ndarray, chunk: int) -> Dict[str, float]:
  """CAPI-SDRi and label accuracies of the separator queried with `labels` (N, K)."""
  silence = len(split.classes)
  reference = np.asarray(split["labels"])

  def separated(rows):     # the separator queried with the tagger's labels
    return inference.outputs(split.take(rows).with_columns({"labels": labels[rows]}))["waveforms"]
  result = s5_metrics.capi_sdri(s5_metrics.split_mixtures(split, labels, separated, chunk))
  result.update(s5_metrics.label_accuracies(
      ((labels[i].tolist(), reference[i].tolist()) for i in range(len(split))), silence))
  return result


def markdown(results: Dict[str, Dict[str, Dict]], split_name: str) -> str:
  lines = [f"# Report 004: system evaluation on {split_name}", ""]
  for number, track in ((1, "1c"), (2, "4c")):
    ours = results.get(track, {})
    reported = REPORTED[track]
    if not ours:
      continue
    lines += [f"## Table {number} ({track})", "",
              "| system | CAPI-SDRi (dB) | Mix. (%) | Src. (%) | report: CAPI | Mix. | Src. |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for system in list(reported) + sorted(set(ours) - set(reported)):
      mine = ours.get(system)
      theirs = reported.get(system)
      cells = (["—"] * 3 if mine is None else
               [f"{mine['capi_sdri']:.3f}", f"{mine['accuracy_mixture']:.3f}",
                f"{mine['accuracy_source']:.3f}"])
      cells += ["—"] * 3 if theirs is None else [f"{v:.3f}" for v in theirs]
      lines.append(f"| {system} | " + " | ".join(cells) + " |")
    lines.append("")
  lines.append("The oracle row queries the separator with the reference labels. Ours are "
               "measured on the split named above, the report's on the DCASE 2026 Task 4 "
               "development test set.")
  return "\n".join(lines) + "\n"


def run(config, workdir: str) -> dict:
  if config.task != "separation":
    raise ValueError(f"stage system_eval runs in a separator's config (task 'separation'), "
                     f"got task {config.task!r}")
  rows = parse_rows(config.system.taggers)
  split_name = common.split_alias(config, config.system.split)
  split = common.load_splits(config, split_name)[split_name]
  for column in ("labels", "sources"):
    if column not in split:
      raise ValueError(f"system_eval needs split {split.name!r} with reference {column}; it "
                       f"has {sorted(split.columns)}")
  inference = common.Inference(config, split, separator_variables(config),
                               outputs=("waveforms",))
  chunk = int(config.system.batch_size) * 8
  results: Dict[str, Dict[str, Dict]] = {}
  for track, system, tagger in rows:
    results.setdefault(track, {})[system] = score(inference, split,
                                                  tagger_labels(tagger, split), chunk)
    print(f"system_eval {track}/{system}: " + ", ".join(
        f"{k} {v:.3f}" for k, v in results[track][system].items() if isinstance(v, float)),
        flush=True)
  oracle = score(inference, split, silence_last(np.asarray(split["labels"]),
                                                 len(split.classes)), chunk)
  for track in results:
    results[track][ORACLE] = oracle
  paths = {}
  if jax.process_index() == 0:
    folder = os.path.join(workdir, "reports")
    os.makedirs(folder, exist_ok=True)
    paths = {"json": os.path.join(folder, "system_eval.json"),
             "md": os.path.join(folder, "system_eval.md")}
    with open(paths["json"], "w") as f:
      json.dump({"split": split.name, "ours": results,
                 "reported": {t: {s: dict(zip(("capi_sdri", "accuracy_mixture",
                                                "accuracy_source"), v))
                                  for s, v in r.items()} for t, r in REPORTED.items()}},
                f, indent=1)
    with open(paths["md"], "w") as f:
      f.write(markdown(results, split.name))
    print(open(paths["md"]).read(), flush=True)
  common.write_done(workdir, "system_eval", config, {"reports": paths, "results": results})
  return results
