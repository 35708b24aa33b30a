"""Optimizers and learning-rate schedules from config (optax).

`config.optimizer`: name (adam | adamw | sgd), learning_rate, b1, b2, eps, momentum, nesterov,
weight_decay (as in PyTorch: adam and sgd add the coupled L2 term `wd·θ` to the gradient, as
`Adam(weight_decay=…)` in the DCASE23 recipe; adamw decays decoupled, `lr·wd·θ`), decay_norm_and_bias (the
references decay every parameter; False decays only kernels), grad_clip_norm (0 = off),
grad_accum_steps (1 = off; micro-batch gradients are averaged by `optax.MultiSteps`),
param_groups (below).

`config.optimizer.param_groups`: a tuple of (regex, settings) pairs, e.g.
  (("backbone/.*", {"frozen": True}), ("head/.*", {"lr_mult": 10.0, "wd_mult": 0.0}))
(a list of pairs, with lists for pairs, is accepted too; from the command line
`--config.optimizer.param_groups="(('head/.*', {'lr_mult': 0.5}),)"`). A parameter's path is the
'/'-joined names of the params tree (`backbone/stage1/block0/conv/kernel`); the first regex that
matches the whole path (`re.fullmatch`) decides its group, unmatched parameters keep the base
settings. Settings: lr_mult (× learning_rate, default 1), wd_mult (× weight_decay, default 1),
frozen (default False: no gradient is computed, the optimizer keeps no state for it and it stays
bit-identical), schedule (a name of SCHEDULES with the other `config.schedule` fields; default
the run's). Clipping (grad_clip_norm) is over all trainable parameters together, as without
groups. A regex that matches no parameter is an error naming the nearest paths. Empty (the
default): one group, exactly the optimizer described above.

`config.schedule`: name
  * warmup_cosine: linear 0 → lr over warmup_steps (or `cosine_warmup_epochs` epochs when > 0),
    half-cosine to end_factor·lr at the last update (`transformers.get_cosine_schedule_with_warmup`,
    DCASE24/25 baselines);
  * dcase23: per-epoch factor = exponential ramp-up over warmup_epochs
    (exp(−5(1 − max(e, 0.5)/W)²)) × linear ramp-down from rampdown_start over rampdown_length
    epochs to last_value (fschmid56/cpjku_dcase23 `run_training.py`);
  * constant.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("warmup_cosine", "dcase23", "constant")


def make_schedule(cfg, base_lr: float, total_updates: int, updates_per_epoch: int):
  name = cfg.name
  if name == "constant":
    return optax.constant_schedule(base_lr)
  if name == "warmup_cosine":
    epochs = float(getattr(cfg, "cosine_warmup_epochs", 0.0))   # a group schedule may lack it
    warmup = int(round(epochs * updates_per_epoch)) if epochs > 0 else int(cfg.warmup_steps)
    warmup = min(warmup, max(total_updates - 1, 0))

    def schedule(count):
      count = jnp.asarray(count, jnp.float32)
      warm = count / max(warmup, 1)
      progress = (count - warmup) / max(total_updates - warmup, 1)
      cosine = cfg.end_factor + (1 - cfg.end_factor) * 0.5 * (
          1 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0)))
      return base_lr * jnp.where(count < warmup, warm, cosine)
    return schedule
  if name == "dcase23":
    def schedule(count):
      epoch = jnp.floor(jnp.asarray(count, jnp.float32) / updates_per_epoch)
      w = float(cfg.warmup_epochs)
      rampup = jnp.where(epoch < w, jnp.exp(-5.0 * (1.0 - jnp.maximum(epoch, 0.5) / w) ** 2), 1.0)
      start, length, last = float(cfg.rampdown_start), float(cfg.rampdown_length), cfg.last_value
      down = last + (1 - last) * (length - epoch + start) / length
      rampdown = jnp.where(epoch <= start, 1.0, jnp.where(epoch < start + length, down, last))
      return base_lr * rampup * rampdown
    return schedule
  raise ValueError(f"schedule.name must be one of {SCHEDULES}, got {name!r}")


def weight_decay_mask(params, decay_norm_and_bias: bool):
  """True where weight decay applies: everything, or only kernels (ndim > 1)."""
  return jax.tree.map(lambda p: bool(decay_norm_and_bias or p.ndim > 1), params)


# ----------------------------------------------------------------------------- parameter groups
GROUP_SETTINGS = {"lr_mult": 1.0, "wd_mult": 1.0, "frozen": False, "schedule": None}
BASE_GROUP = "base"          # label of the parameters no regex matches
TRAINABLE, FROZEN = "trainable", "frozen"


@dataclasses.dataclass(frozen=True)
class ParamGroup:
  """One entry of `config.optimizer.param_groups`; `label` names it in the optimizer state."""
  pattern: str
  label: str
  lr_mult: float = 1.0
  wd_mult: float = 1.0
  frozen: bool = False
  schedule: Optional[str] = None


def param_path(key_path) -> str:
  """A `jax.tree_util` key path → 'backbone/stage1/block0/conv/kernel'."""
  names = []
  for key in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  return "/".join(names)


def param_paths(params) -> List[str]:
  """The paths of the leaves of `params`, in leaf order."""
  return [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def parse_param_groups(groups) -> Tuple[ParamGroup, ...]:
  """`config.optimizer.param_groups` → ParamGroups, checking every field (errors name the key)."""
  parsed = []
  for i, entry in enumerate(groups or ()):
    where = f"optimizer.param_groups[{i}]"
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)
            and hasattr(entry[1], "items")):
      raise ValueError(f"{where} must be a (regex, settings dict) pair, got {entry!r}")
    pattern, settings = entry[0], dict(entry[1].items())
    unknown = sorted(set(settings) - set(GROUP_SETTINGS))
    if unknown:
      raise ValueError(f"{where} ({pattern!r}): unknown settings {unknown}; valid: "
                       f"{sorted(GROUP_SETTINGS)}")
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"{where}: {pattern!r} is not a valid regex ({e})") from None
    values = dict(GROUP_SETTINGS, **settings)
    if values["schedule"] is not None and values["schedule"] not in SCHEDULES:
      raise ValueError(f"{where} ({pattern!r}): schedule must be one of {SCHEDULES}, got "
                       f"{values['schedule']!r}")
    if not isinstance(values["frozen"], bool):
      raise ValueError(f"{where} ({pattern!r}): frozen must be True or False, got "
                       f"{values['frozen']!r}")
    for key in ("lr_mult", "wd_mult"):
      if isinstance(values[key], bool) or not isinstance(values[key], (int, float)):
        raise ValueError(f"{where} ({pattern!r}): {key} must be a number, got {values[key]!r}")
    parsed.append(ParamGroup(pattern, f"group{i}", lr_mult=float(values["lr_mult"]),
                             wd_mult=float(values["wd_mult"]), frozen=values["frozen"],
                             schedule=values["schedule"]))
  return tuple(parsed)


def group_of_paths(groups: Sequence[ParamGroup], paths: Sequence[str]) -> Dict[str, str]:
  """path → group label (first full match wins; BASE_GROUP when none matches). A regex that
  matches no path at all is an error naming it and the nearest paths."""
  labels = {}
  for group in groups:
    matched = [p for p in paths if re.fullmatch(group.pattern, p)]
    if not matched:
      near = difflib.get_close_matches(group.pattern, paths, n=5, cutoff=0.0)
      raise ValueError(f"optimizer.param_groups: regex {group.pattern!r} matches no parameter "
                       f"(the whole path must match); nearest parameter paths: {near}")
    for p in matched:
      labels.setdefault(p, group.label)
  return {p: labels.get(p, BASE_GROUP) for p in paths}


def _labels_fn(path_labels: Dict[str, str]):
  """params-like tree (optax.MaskedNode where masked out) → tree of group labels."""
  return lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, _: path_labels[param_path(path)], tree)


def frozen_mask(cfg, params) -> Optional[Any]:
  """A tree like `params` of Python bools (True: frozen by `cfg.param_groups`), or None when
  nothing is frozen (the trainer then differentiates the whole tree, as without groups)."""
  groups = parse_param_groups(cfg.get("param_groups", ()))
  if not any(g.frozen for g in groups):
    return None
  labels = group_of_paths(groups, param_paths(params))
  frozen = {g.label for g in groups if g.frozen}
  mask = _labels_fn({p: l in frozen for p, l in labels.items()})(params)
  return mask if any(jax.tree.leaves(mask)) else None


def split_frozen(params, mask) -> Tuple[Any, Any]:
  """(trainable, frozen): two trees of `params`' structure, each with `optax.MaskedNode()` (no
  leaves) where the other holds the parameter. `mask`: True where frozen (see `frozen_mask`)."""
  trainable = jax.tree.map(lambda p, f: optax.MaskedNode() if f else p, params, mask)
  frozen = jax.tree.map(lambda p, f: p if f else optax.MaskedNode(), params, mask)
  return trainable, frozen


def merge_frozen(trainable, frozen):
  """The inverse of `split_frozen`: one tree with every parameter."""
  return jax.tree.map(lambda t, f: f if isinstance(t, optax.MaskedNode) else t, trainable, frozen,
                      is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def _with_name(schedule_cfg, name: str):
  """The schedule settings with another `name` (the config itself may be locked)."""
  values = dict(schedule_cfg.items())
  values["name"] = name
  return types.SimpleNamespace(**values)


def make_optimizer(cfg, schedule_cfg, params, total_steps: int, steps_per_epoch: int):
  """Returns (optax transformation, learning-rate schedule over optimizer updates).

  `params`: the parameters (or their `jax.eval_shape`), for the weight-decay mask and the
  parameter groups. With `cfg.param_groups` the transformation takes the whole params tree;
  frozen parameters get a zero update and no state (the trainer does not differentiate them:
  `frozen_mask`). The schedule returned is the base one (of ungrouped parameters).
  """
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {cfg.name!r}")
  accum = int(cfg.grad_accum_steps)
  if accum < 1:
    raise ValueError(f"optimizer.grad_accum_steps must be ≥ 1, got {accum}")
  total_updates = max(total_steps // accum, 1)
  updates_per_epoch = max(steps_per_epoch // accum, 1)
  schedule = make_schedule(schedule_cfg, cfg.learning_rate, total_updates, updates_per_epoch)
  groups = parse_param_groups(cfg.get("param_groups", ()))
  if groups:
    return _grouped_optimizer(cfg, schedule_cfg, params, groups, total_updates,
                              updates_per_epoch, accum), schedule
  mask = weight_decay_mask(params, cfg.decay_norm_and_bias)
  wd = float(cfg.weight_decay)
  parts = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm else []
  tx = optax.chain(*parts, *_update_parts(cfg, wd, mask, schedule))
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx, schedule


def _update_rule(cfg, wd: float, mask, schedule):
  """The optimizer of one group after clipping: L2 / Adam or momentum / decoupled decay / lr."""
  return optax.chain(*_update_parts(cfg, wd, mask, schedule))


def _update_parts(cfg, wd: float, mask, schedule) -> list:
  """The transformations after clipping, in order (flat, so the optimizer state of a run
  without groups keeps its structure)."""
  decoupled = cfg.name == "adamw"
  parts = []
  if wd and not decoupled:
    parts.append(optax.add_decayed_weights(wd, mask))
  if cfg.name in ("adam", "adamw"):
    parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  elif cfg.momentum:
    parts.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
  if wd and decoupled:
    parts.append(optax.add_decayed_weights(wd, mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  return parts


def _grouped_optimizer(cfg, schedule_cfg, params, groups, total_updates, updates_per_epoch,
                       accum):
  """clip (all trainable) → per group [L2 → Adam/momentum → decoupled decay → lr·lr_mult], in
  `optax.partition`; accumulation around that; frozen parameters outside it (`set_to_zero`:
  zero update, no state), so neither the moments nor MultiSteps' sums hold them."""
  path_labels = group_of_paths(groups, param_paths(params))
  used = set(path_labels.values())
  base = ParamGroup(".*", BASE_GROUP)
  mask = lambda tree: weight_decay_mask(tree, cfg.decay_norm_and_bias)
  transforms = {}
  for group in tuple(groups) + (base,):
    if group.frozen or group.label not in used:
      continue
    schedule = make_schedule(_with_name(schedule_cfg, group.schedule or schedule_cfg.name),
                             cfg.learning_rate * group.lr_mult, total_updates, updates_per_epoch)
    transforms[group.label] = _update_rule(cfg, float(cfg.weight_decay) * group.wd_mult, mask,
                                           schedule)
  frozen = {g.label for g in groups if g.frozen}
  parts = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm else []
  if transforms:
    parts.append(optax.partition(transforms, _labels_fn(path_labels)))
  tx = optax.chain(*parts)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum).gradient_transformation()
  if not frozen & used:
    return tx
  outer = _labels_fn({p: FROZEN if l in frozen else TRAINABLE for p, l in path_labels.items()})
  if not transforms:   # everything frozen
    return optax.set_to_zero()
  return optax.partition({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, outer)
