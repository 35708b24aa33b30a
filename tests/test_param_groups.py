"""Parameter groups (`config.optimizer.param_groups`): frozen parts, lr/wd multipliers, per-group
schedules, and the errors of a regex that matches nothing."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from jax_asc import models
from jax_asc.train import loop
from jax_asc.train import mesh as mesh_lib
from jax_asc.train import optim

BATCH, MELS, FRAMES = 8, 32, 20
# Everything but the head of a CP-Mobile (`head_conv/kernel`, `head_norm/{scale,bias}`).
FREEZE_BACKBONE = ((r"(stem_\d|b\d)/.*", {"frozen": True}),)


def _numbers(tree) -> int:
  return sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(tree))


def _optimizer_cfg(**opt):
  config = common.base_config()
  config.optimizer.update(**opt)
  config.schedule.update(name="constant")
  return config


def _toy_params():
  return {"backbone": {"conv": {"kernel": jnp.arange(6.0).reshape(2, 3) - 2.5,
                                "bias": jnp.array([0.5, -1.0, 2.0])}},
          "head": {"kernel": jnp.array([[1.0, -2.0], [0.25, 3.0]]), "bias": jnp.array([0.3, -0.1])}}


def _toy_grads():
  return jax.tree.map(lambda p: jnp.cos(p * 3.0) + 0.1, _toy_params())


def _tiny_cp_mobile_trainer(config):
  cfg = common.cp_mobile("dcase25")
  cfg.update(base_channels=8, n_blocks=(1, 1, 1), strides=((1, 1), (2, 1), (1, 2)))
  model = models.build(cfg, n_classes=4)

  def loss(output, batch, ctx):
    logp = jax.nn.log_softmax(output)
    ce = -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))
    return ce, {}, ctx.loss_state

  task = loop.Task(model=model, make_inputs=lambda key, batch: batch["features"], loss=loss)
  rng = np.random.default_rng(0)
  data = [{"features": rng.normal(size=(BATCH, MELS, FRAMES)).astype(np.float32),
           "label": rng.integers(0, 4, BATCH).astype(np.int32)} for _ in range(4)]
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          jnp.zeros((BATCH, MELS, FRAMES)))["params"]
  tx, _ = optim.make_optimizer(config.optimizer, config.schedule, params, 100, 10)
  trainer = loop.Trainer(task, tx, mesh, ema_decay=0.5,
                         frozen_mask=optim.frozen_mask(config.optimizer, params))
  state = trainer.init(0, data[0])
  return trainer, state, [mesh_lib.global_batch(b, mesh) for b in data]


def test_frozen_backbone_stays_bit_identical_and_has_no_optimizer_state():
  states = {}
  for name, groups in (("all", ()), ("head", FREEZE_BACKBONE)):
    config = _optimizer_cfg(name="adamw", learning_rate=0.05, weight_decay=0.1,
                            grad_clip_norm=1.0, param_groups=groups)
    trainer, state, batches = _tiny_cp_mobile_trainer(config)
    initial = jax.device_get(state)
    for batch in batches:
      state, metrics = trainer.train_step(state, batch)
    states[name] = (initial, jax.device_get(state), trainer.frozen_mask, metrics)

  initial, final, mask, metrics = states["head"]
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  flat_mask = jax.tree.leaves(mask)
  assert sum(flat_mask) == len(flat_mask) - 3   # head_conv/kernel, head_norm/{bias,scale}
  for frozen, p0, p1, e1 in zip(flat_mask, jax.tree.leaves(initial.params),
                                jax.tree.leaves(final.params), jax.tree.leaves(final.ema_params)):
    if frozen:   # bit for bit, through decoupled weight decay, clipping and the EMA
      assert p0.tobytes() == p1.tobytes() and e1.tobytes() == p1.tobytes()
    else:
      assert not np.array_equal(p0, p1)
  # BatchNorm statistics are not parameters: a frozen backbone still tracks them in training.
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial.batch_stats),
                                                      jax.tree.leaves(final.batch_stats)))

  # Adam keeps two moments per trained number (and a few step counts), none for frozen ones.
  head = _numbers(optim.split_frozen(final.params, mask)[0])
  every = _numbers(final.params)
  moments = lambda state: sum(math.prod(np.shape(l)) for l in jax.tree.leaves(state.opt_state)
                              if np.ndim(l) > 0)
  assert head < every / 10
  assert moments(final) == 2 * head
  assert moments(states["all"][1]) == 2 * every
  frozen_shapes = {np.shape(l) for f, l in zip(flat_mask, jax.tree.leaves(final.params)) if f}
  head_shapes = {np.shape(l) for f, l in zip(flat_mask, jax.tree.leaves(final.params)) if not f}
  assert not ({np.shape(l) for l in jax.tree.leaves(final.opt_state)} & (frozen_shapes -
                                                                         head_shapes))


def test_no_groups_is_the_plain_optimizer():
  params, grads = _toy_params(), _toy_grads()
  config = _optimizer_cfg(name="adamw", learning_rate=0.1, weight_decay=0.01, grad_clip_norm=0.5)
  plain, _ = optim.make_optimizer(config.optimizer, config.schedule, params, 10, 5)
  config.optimizer.param_groups = ((".*", {}),)   # one group with the base settings
  grouped, _ = optim.make_optimizer(config.optimizer, config.schedule, params, 10, 5)
  assert optim.frozen_mask(config.optimizer, params) is None
  a, _ = plain.update(grads, plain.init(params), params)
  b, _ = grouped.update(grads, grouped.init(params), params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_lr_mult_halves_the_sgd_update_of_its_group_exactly(momentum):
  params, grads = _toy_params(), _toy_grads()
  config = _optimizer_cfg(name="sgd", momentum=momentum, learning_rate=0.3, weight_decay=0.0)
  base_tx, _ = optim.make_optimizer(config.optimizer, config.schedule, params, 10, 5)
  config.optimizer.param_groups = [("head/.*", {"lr_mult": 0.5})]   # a list works too
  half_tx, _ = optim.make_optimizer(config.optimizer, config.schedule, params, 10, 5)
  base_state, half_state = base_tx.init(params), half_tx.init(params)
  for _ in range(3):
    base, base_state = base_tx.update(grads, base_state, params)
    half, half_state = half_tx.update(grads, half_state, params)
    for part in ("head", "backbone"):
      factor = 0.5 if part == "head" else 1.0
      for x, y in zip(jax.tree.leaves(half[part]), jax.tree.leaves(base[part])):
        np.testing.assert_array_equal(x, factor * y)
        assert np.all(np.asarray(y) != 0)


def test_wd_mult_and_group_schedule():
  params, _ = _toy_params(), None
  zero = jax.tree.map(jnp.zeros_like, params)
  config = _optimizer_cfg(name="sgd", momentum=0.0, learning_rate=1.0, weight_decay=0.1,
                          param_groups=(("head/bias", {"wd_mult": 0.0}),
                                        ("head/kernel", {"wd_mult": 2.0})))
  tx, _ = optim.make_optimizer(config.optimizer, config.schedule, params, 10, 5)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_array_equal(updates["head"]["bias"], 0.0)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.2 * params["head"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_allclose(updates["backbone"]["conv"]["kernel"],
                             -0.1 * params["backbone"]["conv"]["kernel"], rtol=1e-6)

  # The base schedule warms up from 0; a group on "constant" takes full steps from the start.
  config = _optimizer_cfg(name="sgd", momentum=0.0, learning_rate=1.0, weight_decay=0.0,
                          param_groups=(("head/.*", {"schedule": "constant"}),))
  config.schedule.update(name="warmup_cosine", warmup_steps=5)
  tx, schedule = optim.make_optimizer(config.optimizer, config.schedule, params, 10, 5)
  grads = _toy_grads()
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(schedule(0)) == 0.0
  np.testing.assert_array_equal(updates["backbone"]["conv"]["bias"], 0.0)
  np.testing.assert_allclose(updates["head"]["bias"], -grads["head"]["bias"], rtol=1e-6)


def test_first_matching_group_wins_and_frozen_with_accumulation_keeps_no_state():
  params, grads = _toy_params(), _toy_grads()
  config = _optimizer_cfg(name="adam", learning_rate=0.1, weight_decay=0.0, grad_accum_steps=2,
                          param_groups=(("backbone/conv/bias", {"lr_mult": 2.0}),
                                        ("backbone/.*", {"frozen": True})))
  mask = optim.frozen_mask(config.optimizer, params)
  assert mask == {"backbone": {"conv": {"kernel": True, "bias": False}},
                  "head": {"kernel": False, "bias": False}}
  tx, _ = optim.make_optimizer(config.optimizer, config.schedule, params, 10, 5)
  state = tx.init(params)
  # Adam's two moments and MultiSteps' gradient sum: 3 numbers per trained one, none frozen.
  trained = _numbers(optim.split_frozen(params, mask)[0])
  assert sum(math.prod(np.shape(l)) for l in jax.tree.leaves(state) if np.ndim(l)) == 3 * trained
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
  np.testing.assert_array_equal(updates["backbone"]["conv"]["kernel"], 0.0)
  assert np.all(np.asarray(updates["backbone"]["conv"]["bias"]) != 0)


def test_split_and_merge_round_trip():
  params = _toy_params()
  mask = {"backbone": {"conv": {"kernel": True, "bias": True}},
          "head": {"kernel": False, "bias": True}}
  trainable, frozen = optim.split_frozen(params, mask)
  assert _numbers(trainable) == 4 and _numbers(frozen) == _numbers(params) - 4
  merged = optim.merge_frozen(trainable, frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_a_regex_matching_nothing_names_the_nearest_paths():
  config = _optimizer_cfg(param_groups=(("backbone/cnov/.*", {"frozen": True}),))
  with pytest.raises(ValueError, match=r"optimizer\.param_groups.*'backbone/cnov/\.\*'.*"
                                       r"matches no parameter.*backbone/conv/"):
    optim.make_optimizer(config.optimizer, config.schedule, _toy_params(), 10, 5)
  with pytest.raises(ValueError, match="backbone/conv/"):
    optim.frozen_mask(config.optimizer, _toy_params())


@pytest.mark.parametrize("groups,message", [
    ((("head/.*", {"lr_multiplier": 2.0}),), r"unknown settings \['lr_multiplier'\].*lr_mult"),
    ((("head/.*", {"schedule": "cosine"}),), "schedule must be one of"),
    ((("head/.*", {"frozen": "yes"}),), "frozen must be True or False"),
    ((("head/(", {"frozen": True}),), "not a valid regex"),
    (("head/.*",), r"param_groups\[0\] must be a \(regex, settings dict\) pair"),
])
def test_malformed_groups_are_errors_naming_the_entry(groups, message):
  config = _optimizer_cfg(param_groups=groups)
  with pytest.raises(ValueError, match=message):
    optim.make_optimizer(config.optimizer, config.schedule, _toy_params(), 10, 5)


def test_the_locked_config_takes_groups_and_trains_a_frozen_run(tiny_config, tmp_path):
  """From a config file or `--config.optimizer.param_groups=…` (a Python literal), through fit."""
  from jax_asc.stages import common as stages
  config = tiny_config
  config.lock()
  config.optimizer.param_groups = (("(stem_\\d|b\\d)/.*", {"frozen": True}),
                                   ("head_.*", {"lr_mult": 2.0}))
  split, task = stages.training_task(config, stages.load_splits(config, "train")["train"])
  data = stages.train_data(config, split)
  fresh = jax.device_get(loop.setup(task, config, data).state)
  result = loop.fit(task, config, str(tmp_path / "frozen"), data)
  mask = result.trainer.frozen_mask
  final = jax.device_get(result.state)
  for frozen, p0, p1 in zip(jax.tree.leaves(mask), jax.tree.leaves(fresh.params),
                            jax.tree.leaves(final.params)):
    assert (p0.tobytes() == p1.tobytes()) == frozen
