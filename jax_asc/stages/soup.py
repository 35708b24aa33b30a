"""Stage `soup`: a uniform model soup (Wortsman et al. 2022) of the run's best checkpoints.

Averages params, BatchNorm statistics (and EMA params) of the `soup.top_k` best checkpoints by
`checkpoint.best_metric` (report 001 uses the top 5) into `<workdir>/checkpoints/soup`, then
evaluates the soup and each ingredient on the validation split (the task's evaluators) →
`<workdir>/reports/soup.{json,md}`. Use it with `evaluate.checkpoint=soup` or
`predict.checkpoint=soup`. Averaged running statistics are an approximation (the soup's true
activation statistics differ slightly); the report does not say how it treats them.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from jax_asc.stages import common


def average(trees):
  return jax.tree.map(lambda *leaves: np.mean(np.stack([np.asarray(l, np.float32)
                                                        for l in leaves]), 0).astype(
                                                            np.asarray(leaves[0]).dtype), *trees)


def run(config, workdir: str) -> dict:
  k = int(config.soup.top_k)
  checkpoints = common.checkpoints_of(config, workdir)
  try:
    steps = checkpoints.best_steps()
    ingredients = []
    for step in steps:
      variables, meta = checkpoints.restore_variables("best", step)
      ingredients.append((meta.get("metrics", {}).get(config.checkpoint.best_metric), step,
                          variables))
    if len(ingredients) < k:
      raise ValueError(f"soup.top_k={k} but {workdir} keeps {len(ingredients)} best checkpoints "
                       f"(checkpoint.keep_best={config.checkpoint.keep_best}; evaluations every "
                       f"{config.eval_every_epochs} epochs)")
    sign = -1 if config.checkpoint.best_mode == "max" else 1
    ingredients.sort(key=lambda item: (sign * item[0], -item[1]))
    chosen = ingredients[:k]
    soup = {name: average([v[name] for _, _, v in chosen])
            for name in chosen[0][2] if chosen[0][2][name]}
    soup.setdefault("batch_stats", {})
    step = max(s for _, s, _ in chosen)
    checkpoints.save_soup(step, soup, {"step": step, "ingredients": [s for _, s, _ in chosen]})
  finally:
    checkpoints.close()

  validation = common.load_splits(config, config.data.validation_split)[
      config.data.validation_split]
  rows = []
  for label, variables in [("soup", soup)] + [(f"step {s}", v) for _, s, v in chosen]:
    rows.append((label, common.Inference(config, validation, variables).scalars(
        validation, "validation")))
  names = sorted(rows[0][1])
  outputs = {"ingredients": [s for _, s, _ in chosen], "step": step,
             "validation": {label: scalars for label, scalars in rows}}
  if jax.process_index() == 0:
    lines = [f"# Model soup of the best {k} checkpoints ({config.checkpoint.best_metric})", "",
             "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(f"{scalars[n]:.4f}" for n in names) + " |"
              for label, scalars in rows]
    os.makedirs(os.path.join(workdir, "reports"), exist_ok=True)
    with open(os.path.join(workdir, "reports", "soup.md"), "w") as f:
      f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
  common.write_done(workdir, "soup", config, outputs)
  return outputs
