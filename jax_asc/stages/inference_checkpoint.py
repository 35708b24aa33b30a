"""Stage `inference_checkpoint`: the model a deployment loads, without what only training needs.

Takes checkpoint `evaluate.checkpoint` (its EMA parameters with `evaluate.use_ema`) and drops
the task family's training-only parameters (`TRAIN_ONLY_PARAMS`: report 004's semantic projector,
§2.3 "the frozen teacher is removed from the inference checkpoint"; teachers are never part of a
checkpoint: frozen online teachers live outside the train state, cached ones are files). Writes
`<workdir>/inference_checkpoint/`:

  variables/     orbax: {"params", "batch_stats"} of the inference model
  model.json     its `config.model` (the family's `inference_model_config`, e.g.
                 `model.semantic_dim` = 0)
  manifest.json  the source checkpoint and step, the parameters kept and dropped (counts)

Before writing, the inference model built from `model.json` and given only the kept variables
predicts the first `evaluate.batch_size` examples of `evaluate.split`, and must give the
training model's outputs (to float rounding: 1e-5 relative, 1e-6 absolute). `load(workdir)` reads the folder back.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Tuple

import jax
import ml_collections
import numpy as np

from jax_asc import tasks
from jax_asc.stages import common

FOLDER = "inference_checkpoint"


def _count(tree) -> int:
  return int(sum(np.size(leaf) for leaf in jax.tree.leaves(tree)))


def strip(config, variables, use_ema: bool = False) -> Tuple[Dict, Dict]:
  """({"params", "batch_stats"} of the inference model, {dropped name: parameter count})."""
  family = tasks.family(config)
  drop = set(getattr(family, "TRAIN_ONLY_PARAMS", ()))
  params = variables.get("ema_params") if use_ema else variables["params"]
  if params is None:
    raise ValueError("evaluate.use_ema=True but the checkpoint has no EMA parameters")
  stats = variables.get("batch_stats") or {}
  dropped = {name: _count(params[name]) for name in sorted(params) if name in drop}
  kept = {"params": {k: v for k, v in params.items() if k not in drop},
          "batch_stats": {k: v for k, v in stats.items() if k not in drop}}
  return kept, dropped


def inference_config(config) -> ml_collections.ConfigDict:
  """The run's config with the inference model (`family.inference_model_config`)."""
  family = tasks.family(config)
  out = config.copy_and_resolve_references()
  if hasattr(family, "inference_model_config"):
    out.model = family.inference_model_config(config)
  return out


def run(config, workdir: str) -> dict:
  which = config.evaluate.checkpoint
  variables, meta = common.restore_variables(config, workdir, which)
  use_ema = bool(config.evaluate.use_ema)
  kept, dropped = strip(config, variables, use_ema)
  lean_config = inference_config(config)
  split = common.load_splits(config, config.evaluate.split)[config.evaluate.split]
  part = split.take(np.arange(min(int(config.evaluate.batch_size), len(split))))
  full = common.Inference(config, split, variables, use_ema=use_ema).outputs(part)
  lean = common.Inference(lean_config, split, kept).outputs(part)
  for name, value in full.items():
    # Two programs compiled apart: equal up to float rounding (a GPU may pick other kernels).
    if not np.allclose(np.asarray(value), np.asarray(lean[name]), rtol=1e-5, atol=1e-6):
      raise AssertionError(f"the inference model's {name!r} differs from the trained model's "
                           f"(max |Δ| {np.abs(np.asarray(value) - lean[name]).max():.3g}): "
                           f"dropping {sorted(dropped)} changed the function")
  folder = os.path.abspath(os.path.join(workdir, FOLDER))
  manifest = {"checkpoint": which, "step": int(meta["step"]), "use_ema": use_ema,
              "parameters": _count(kept["params"]), "dropped": dropped,
              "checked_examples": len(part), "checked_outputs": sorted(full)}
  if jax.process_index() == 0:
    import orbax.checkpoint as ocp
    os.makedirs(folder, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(folder, "variables"), kept, force=True)
    checkpointer.wait_until_finished()
    with open(os.path.join(folder, "model.json"), "w") as f:
      f.write(lean_config.model.to_json_best_effort(indent=1, sort_keys=True))
    with open(os.path.join(folder, "manifest.json"), "w") as f:
      json.dump(manifest, f, indent=1)
  print(f"inference checkpoint {folder}: {manifest['parameters']:,} parameters"
        + (f", dropped {dropped}" if dropped else ""), flush=True)
  common.write_done(workdir, "inference_checkpoint", config, {"folder": folder, **manifest})
  return manifest


def load(workdir: str) -> Tuple[ml_collections.ConfigDict, Dict]:
  """(the inference model's config section, {"params", "batch_stats"}) written by this stage."""
  import orbax.checkpoint as ocp
  folder = os.path.abspath(os.path.join(workdir, FOLDER))
  if not os.path.exists(os.path.join(folder, "model.json")):
    raise FileNotFoundError(f"{folder} holds no inference checkpoint: run stage "
                            "inference_checkpoint first")
  with open(os.path.join(folder, "model.json")) as f:
    model = ml_collections.ConfigDict(json.load(f))
  variables = ocp.StandardCheckpointer().restore(os.path.join(folder, "variables"))
  return model, variables
