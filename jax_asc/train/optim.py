"""Optimizers and learning-rate schedules from config (optax).

`config.optimizer`: name (adam | adamw | sgd), learning_rate, b1, b2, eps, momentum, nesterov,
weight_decay (as in PyTorch: adam and sgd add the coupled L2 term `wd·θ` to the gradient, as
`Adam(weight_decay=…)` in the DCASE23 recipe; adamw decays decoupled, `lr·wd·θ`), decay_norm_and_bias (the
references decay every parameter; False decays only kernels), grad_clip_norm (0 = off),
grad_accum_steps (1 = off; micro-batch gradients are averaged by `optax.MultiSteps`).

`config.schedule`: name
  * warmup_cosine: linear 0 → lr over warmup_steps, half-cosine to end_factor·lr at the last update
    (`transformers.get_cosine_schedule_with_warmup`, DCASE24/25 baselines);
  * dcase23: per-epoch factor = exponential ramp-up over warmup_epochs
    (exp(−5(1 − max(e, 0.5)/W)²)) × linear ramp-down from rampdown_start over rampdown_length
    epochs to last_value (fschmid56/cpjku_dcase23 `run_training.py`);
  * constant.
"""
from __future__ import annotations

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
    warmup = min(int(cfg.warmup_steps), max(total_updates - 1, 0))

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


def make_optimizer(cfg, schedule_cfg, params, total_steps: int, steps_per_epoch: int):
  """Returns (optax transformation, learning-rate schedule over optimizer updates)."""
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {cfg.name!r}")
  accum = int(cfg.grad_accum_steps)
  if accum < 1:
    raise ValueError(f"optimizer.grad_accum_steps must be ≥ 1, got {accum}")
  total_updates = max(total_steps // accum, 1)
  schedule = make_schedule(schedule_cfg, cfg.learning_rate, total_updates,
                           max(steps_per_epoch // accum, 1))
  mask = weight_decay_mask(params, cfg.decay_norm_and_bias)
  wd = float(cfg.weight_decay)
  decoupled = cfg.name == "adamw"
  parts = []
  if cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if wd and not decoupled:
    parts.append(optax.add_decayed_weights(wd, mask))
  if cfg.name in ("adam", "adamw"):
    parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  elif cfg.momentum:
    parts.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
  if wd and decoupled:
    parts.append(optax.add_decayed_weights(wd, mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  tx = optax.chain(*parts)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx, schedule
