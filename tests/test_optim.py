"""Optimizers and schedules against their reference formulas."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from jax_asc.train import optim


def _cfgs(**opt):
  config = common.base_config()
  config.optimizer.update(**opt)
  return config.optimizer, config.schedule


def test_warmup_cosine_matches_transformers_formula():
  _, sched_cfg = _cfgs()
  sched_cfg.warmup_steps = 10
  schedule = optim.make_schedule(sched_cfg, 0.005, total_updates=110, updates_per_epoch=11)
  for step in (0, 5, 10, 60, 109, 110):
    if step < 10:
      expected = 0.005 * step / 10
    else:
      expected = 0.005 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-8)


def test_dcase23_schedule_matches_the_per_epoch_lambda():
  _, sched_cfg = _cfgs()
  sched_cfg.name = "dcase23"
  steps_per_epoch = 7
  schedule = optim.make_schedule(sched_cfg, 9e-4, total_updates=150 * 7,
                                 updates_per_epoch=steps_per_epoch)

  def reference(e):   # fschmid56/cpjku_dcase23 run_training.py
    up = math.exp(-5 * (1 - max(e, 0.5) / 14) ** 2) if e < 14 else 1.0
    if e <= 50:
      down = 1.0
    elif e < 134:
      down = 0.005 + 0.995 * (84 - e + 50) / 84
    else:
      down = 0.005
    return 9e-4 * up * down

  for epoch in (0, 1, 13, 14, 50, 51, 100, 133, 134, 149):
    for offset in (0, steps_per_epoch - 1):   # constant within an epoch
      assert float(schedule(epoch * steps_per_epoch + offset)) == pytest.approx(
          reference(epoch), rel=1e-5)


def _quadratic_problem():
  params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.3, -0.1])}
  grads = {"w": jnp.array([[0.1, 0.2], [-0.3, 0.4]]), "b": jnp.array([0.5, -0.5])}
  return params, grads


def test_adam_coupled_l2_and_adamw_decoupled_decay():
  params, grads = _quadratic_problem()
  for name, expected_tx in (
      ("adam", optax.chain(optax.add_decayed_weights(0.01), optax.adam(0.1))),
      ("adamw", optax.adamw(0.1, weight_decay=0.01))):
    opt_cfg, sched_cfg = _cfgs(name=name, learning_rate=0.1, weight_decay=0.01)
    sched_cfg.name = "constant"
    tx, _ = optim.make_optimizer(opt_cfg, sched_cfg, params, 10, 5)
    ours, _ = tx.update(grads, tx.init(params), params)
    ref, _ = expected_tx.update(grads, expected_tx.init(params), params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
      np.testing.assert_allclose(a, b, rtol=1e-6)


def test_weight_decay_mask_skips_norm_and_bias_when_asked():
  params, grads = _quadratic_problem()
  zero = jax.tree.map(jnp.zeros_like, grads)
  opt_cfg, sched_cfg = _cfgs(name="sgd", momentum=0.0, learning_rate=1.0, weight_decay=0.1,
                             decay_norm_and_bias=False)
  sched_cfg.name = "constant"
  tx, _ = optim.make_optimizer(opt_cfg, sched_cfg, params, 10, 5)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * params["w"], rtol=1e-6)
  np.testing.assert_array_equal(updates["b"], 0.0)


def test_gradient_clipping_and_accumulation():
  params, grads = _quadratic_problem()
  opt_cfg, sched_cfg = _cfgs(name="sgd", momentum=0.0, learning_rate=1.0, weight_decay=0.0,
                             grad_clip_norm=0.1, grad_accum_steps=2)
  sched_cfg.name = "constant"
  tx, _ = optim.make_optimizer(opt_cfg, sched_cfg, params, 10, 5)
  state = tx.init(params)
  first, state = tx.update(grads, state, params)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(first))   # accumulating
  other = jax.tree.map(lambda g: -0.5 * g, grads)
  second, state = tx.update(other, state, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, grads, other)
  norm = optax.global_norm(mean)
  expected = jax.tree.map(lambda g: -g * min(1.0, 0.1 / float(norm)), mean)
  for a, b in zip(jax.tree.leaves(second), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_unknown_optimizer_is_named():
  params, _ = _quadratic_problem()
  opt_cfg, sched_cfg = _cfgs(name="lamb")
  with pytest.raises(ValueError, match="lamb"):
    optim.make_optimizer(opt_cfg, sched_cfg, params, 10, 5)
