"""Initial weights of a run (`config.model_init`): an official checkpoint (PaSST; report 003's
BEATs teacher; report 004's M2D encoder and ResUNetK separator) or another run's checkpoint (a
later phase of a recipe, a plan's `init_from`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc.teachers import online

KINDS = ("passt_torch", "m2d_torch", "resunetk_torch", "beats_torch", "run")


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
    batch_stats = None
    if config.model_init.kind == "passt_torch":
      loaded = convert.passt_params(convert.load_torch_state_dict(
          source, prefix=config.model_init.prefix))
    elif config.model_init.kind == "m2d_torch":   # the tagger's encoder (models.m2d.M2DTagger)
      heads = config.model.get("num_heads")   # the weights cannot tell the head count
      encoder, info = convert.load_m2d(source, num_heads=int(heads) if heads else None)
      check_m2d_norm(config, info, source)
      loaded = {"encoder": encoder}
    elif config.model_init.kind == "resunetk_torch":   # tasks.separation.QueriedSeparator
      variables = convert.resunetk_params(convert.load_torch_state_dict(source))
      loaded = {"separator": variables["params"]}
      batch_stats = {"separator": variables["batch_stats"]}
    elif config.model_init.kind == "beats_torch":   # models.beats.BEATsClassifier's backbone
      cfg, backbone = convert.load_beats(source)
      check_beats_cfg(config, cfg, source)
      loaded = {"backbone": backbone}
    else:
      _, variables = online.load_run(source, config.model_init.checkpoint,
                                     "model_init.checkpoint")
      loaded = variables["params"]
      batch_stats = None if config.model_init.params_only else variables["batch_stats"]
    params, skipped = merge(state.params, loaded)
    if config.model_init.kind in ("m2d_torch", "resunetk_torch", "beats_torch"):
      # The official weights are the whole encoder / separator / backbone: none may stay fresh
      # (the heads may: they are outside it).
      part = {"m2d_torch": "encoder", "resunetk_torch": "separator",
              "beats_torch": "backbone"}[config.model_init.kind]
      if part not in state.params:
        raise ValueError(f"model_init.kind={config.model_init.kind!r} loads the model's "
                         f"{part!r}, which config.model ({config.model.name}) does not have")
      fresh = [p for p in skipped if p == f"/{part}" or p.startswith(f"/{part}/")]
      if batch_stats:
        fresh += [p for p in merge(state.batch_stats, batch_stats)[1]
                  if p.startswith(f"/{part}/")]
      if fresh:
        raise ValueError(f"{source}: {len(fresh)} variable(s) of {part} do not fit the "
                         f"checkpoint (absent or of another shape): {fresh[:5]}")
    if skipped:
      print(f"model_init: kept fresh (shape differs or absent): {skipped}", flush=True)
    new = state.replace(params=params, opt_state=state.opt_state)
    if batch_stats:
      new = new.replace(batch_stats=merge(state.batch_stats, batch_stats)[0])
    if new.ema_params is not None:
      new = new.replace(ema_params=jax.tree.map(jnp.copy, params))
    return new
  return initialize


def check_m2d_norm(config, info, source) -> None:
  """Raises when the run's frontend normalisation is not the M2D checkpoint's `norm_stats`
  (the encoder would see inputs on another scale than it was trained on)."""
  mean, std = (float(v) for v in info["norm_stats"])
  shift, scale = float(config.frontend.norm_shift), float(config.frontend.norm_scale)
  if abs(shift + mean) > 1e-4 * max(1.0, abs(mean)) or abs(scale - std) > 1e-4 * max(1.0, std):
    raise ValueError(f"{source}: its norm_stats are (mean {mean}, std {std}) but the run's "
                     f"frontend normalises with norm_shift={shift}, norm_scale={scale}: pass "
                     f"m2d_norm={mean}:{std} (launch/report004_s5.sh --option "
                     f"m2d_norm={mean}:{std}), or set frontend.norm_shift={-mean}, "
                     f"frontend.norm_scale={std}")
  model = config.model
  for key in ("embed_dim", "depth", "num_heads", "patch_size", "flat_features"):
    if key in model and info[key] != model[key]:
      raise ValueError(f"{source}: the checkpoint's {key} is {info[key]}, config.model.{key} "
                       f"is {model[key]}")
  if "input_size" in model and tuple(info["input_size"]) != tuple(model.input_size):
    raise ValueError(f"{source}: the checkpoint's input_size is {tuple(info['input_size'])}, "
                     f"config.model.input_size is {tuple(model.input_size)}")


def check_beats_cfg(config, cfg, source) -> None:
  """Raises when config.model (name "beats") differs from the BEATs checkpoint's cfg in an
  architecture field (`convert.BEATS_CFG_ARCHITECTURE`; the dropout rates may differ)."""
  from jax_asc.models import convert
  if config.model.name != "beats":
    raise ValueError(f"model_init.kind='beats_torch' loads a BEATs backbone; config.model.name "
                     f"is {config.model.name!r}, not 'beats'")
  fields = convert.beats_model_fields(cfg)
  differ = [f"{key}: checkpoint {fields[key]!r}, config.model {config.model[key]!r}"
            for key in convert.BEATS_CFG_ARCHITECTURE
            if key in config.model and config.model[key] != fields[key]]
  if differ:
    raise ValueError(f"{source}: its cfg differs from config.model ({'; '.join(differ)}): set "
                     "config.model from the checkpoint's cfg (convert.beats_model_fields)")


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
