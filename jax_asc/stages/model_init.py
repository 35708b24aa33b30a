"""Initial weights of a run (`config.model_init`): an official PaSST checkpoint or another
run's checkpoint (a later phase of a recipe, a plan's `init_from`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc.teachers import online

KINDS = ("passt_torch", "run")


def pretrained_initializer(config):
  """`initialize` for `loop.fit` loading `config.model_init` (a PaSST .pt/.npz or another run's
  checkpoint) into matching parameters; the head is kept fresh when its shape differs. None
  when `model_init.path` is empty."""
  from jax_asc.models import convert
  source = config.model_init.path
  if not source:
    return None
  if config.model_init.kind not in KINDS:
    raise ValueError(f"model_init.kind must be one of {KINDS}, got {config.model_init.kind!r}")
  if config.model_init.prefix and config.model_init.kind != "passt_torch":
    raise ValueError(f"model_init.prefix={config.model_init.prefix!r} applies to kind "
                     f"'passt_torch' only, not {config.model_init.kind!r}")

  def initialize(state):
    if config.model_init.kind == "passt_torch":
      loaded = convert.passt_params(convert.load_torch_state_dict(
          source, prefix=config.model_init.prefix))
      batch_stats = None
    else:
      _, variables = online.load_run(source, config.model_init.checkpoint,
                                     "model_init.checkpoint")
      loaded = variables["params"]
      batch_stats = None if config.model_init.params_only else variables["batch_stats"]
    params, skipped = merge(state.params, loaded)
    if skipped:
      print(f"model_init: kept fresh (shape differs or absent): {skipped}", flush=True)
    new = state.replace(params=params, opt_state=state.opt_state)
    if batch_stats:
      new = new.replace(batch_stats=merge(state.batch_stats, batch_stats)[0])
    if new.ema_params is not None:
      new = new.replace(ema_params=jax.tree.map(jnp.copy, params))
    return new
  return initialize


def merge(target, source, path=""):
  """(target's tree with leaves replaced by source's where names and shapes agree, the paths
  kept from target)."""
  skipped = []
  if isinstance(target, dict):
    out = {}
    for k, v in target.items():
      if isinstance(source, dict) and k in source:
        out[k], sub = merge(v, source[k], f"{path}/{k}")
        skipped += sub
      else:
        out[k] = v
        skipped.append(f"{path}/{k}")
    return out, skipped
  if np.shape(source) == np.shape(target):
    return jnp.asarray(source, target.dtype), skipped
  return target, [path]
