"""Tasks other than single-label classification through the same trainer: a toy multi-label
tagging task (K event tracks with a silence class) trained with the registry's PIT cross-entropy
plus PI-KD against the student's own EMA (report 004's objective, eq. 1-2)."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from jax_asc.losses import registry
from jax_asc.train import loop
from jax_asc.train import mesh as mesh_lib

EVENTS, TRACKS, DIM = 5, 2, 12
SILENCE = EVENTS   # class index of an empty track
PROTOTYPES = np.random.default_rng(7).normal(0, 1.5, (EVENTS, DIM)).astype(np.float32)


def _mixtures(n, seed):
  """x (n, DIM): the sum of one or two event prototypes plus noise; tracks (n, TRACKS): the event
  classes in a random order, SILENCE for the empty track of a one-event mixture."""
  rng = np.random.default_rng(seed)
  tracks = np.full((n, TRACKS), SILENCE, np.int32)
  x = rng.normal(0, 0.3, (n, DIM)).astype(np.float32)
  for i in range(n):
    events = rng.choice(EVENTS, size=rng.integers(1, TRACKS + 1), replace=False)
    x[i] += PROTOTYPES[events].sum(0)
    slots = rng.permutation(TRACKS)[:len(events)]
    tracks[i, slots] = events
  return x, tracks


class Tagger(nn.Module):
  """(B, DIM) → track logits (B, TRACKS, EVENTS + 1)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Dense(64)(x))
    return nn.Dense(TRACKS * (EVENTS + 1))(h).reshape(x.shape[0], TRACKS, EVENTS + 1)


def _task(weights):
  model = Tagger()
  settings = registry.default_settings()
  registry.check_inputs(weights, settings, {"track_logits", "track_targets", "step"},
                        {"ema": ("track_logits",)}, "toy_tagging")

  def teacher(frozen, batch):
    return {"ema": {"track_logits": model.apply(frozen["ema"], batch["x"])}}

  def loss(track_logits, batch, ctx):
    inputs = {"track_logits": track_logits, "track_targets": batch["tracks"],
              "teachers": ctx.teachers, "step": ctx.step}
    value, metrics, _ = registry.total(weights, settings, inputs)
    return value, metrics, ctx.loss_state

  return loop.Task(model=model, make_inputs=lambda key, batch: batch["x"], loss=loss,
                   teacher=teacher, ema_teacher=True)


def _set_accuracy(track_logits, tracks):
  """Fraction of mixtures whose predicted multiset of track classes is the reference's."""
  predicted = np.sort(np.asarray(track_logits).argmax(-1), axis=1)
  return float(np.mean(np.all(predicted == np.sort(tracks, axis=1), axis=1)))


def test_pit_tagging_with_an_ema_teacher_trains_through_the_trainer(tmp_path):
  x, tracks = _mixtures(512, 0)
  x_val, tracks_val = _mixtures(256, 1)
  batch_size = 64
  steps_per_epoch = len(x) // batch_size

  def batches(start_step):
    step = start_step
    while True:
      order = np.random.default_rng(step // steps_per_epoch).permutation(len(x))
      rows = order[(step % steps_per_epoch) * batch_size:][:batch_size]
      yield {"x": x[rows], "tracks": tracks[rows], "mask": np.ones(batch_size, bool)}
      step += 1

  def evaluate(trainer, state):
    val = ({"x": x_val[s:s + 128], "mask": np.ones(128, bool)} for s in range(0, 256, 128))
    logits = trainer.predict(state, val, num_examples=256)["logits"]
    return {"validation/set_accuracy": _set_accuracy(logits, tracks_val)}

  config = common.base_config()
  config.batch_size, config.num_epochs = batch_size, 12
  config.optimizer.update(name="adam", learning_rate=3e-3, weight_decay=0.0)
  config.schedule.name = "constant"
  config.ema_decay = 0.99
  config.log_every_steps = steps_per_epoch
  config.eval_every_epochs = 12
  config.checkpoint.update(best_metric="validation/set_accuracy", keep_best=1)

  task = _task({"pit_ce": 1.0, "pi_kd": 0.5})
  untrained = loop.setup(task, config, loop.TrainData(steps_per_epoch, batches),
                         mesh=mesh_lib.make_mesh(jax.devices()[:1]))
  before = evaluate(untrained.trainer, untrained.state)["validation/set_accuracy"]
  result = loop.fit(task, config, str(tmp_path / "tagger"), loop.TrainData(steps_per_epoch,
                                                                            batches),
                    evaluate=evaluate, mesh=mesh_lib.make_mesh(jax.devices()[:1]))
  after = result.last_eval["validation/set_accuracy"]
  # Chance of guessing the multiset: 1 / (5 + C(5, 2)) ≈ 0.07 (and ≈ 0 before training).
  assert after > 0.6 and after > before + 0.4, (before, after)


def test_pit_loss_ignores_the_track_order():
  x, tracks = _mixtures(16, 3)
  model = Tagger()
  params = model.init(jax.random.key(0), jnp.asarray(x))
  logits = model.apply(params, jnp.asarray(x))
  settings = registry.default_settings()
  for perm in itertools.permutations(range(TRACKS)):
    value = registry.total({"pit_ce": 1.0}, settings, {
        "track_logits": logits, "track_targets": jnp.asarray(tracks[:, list(perm)])})[0]
    np.testing.assert_allclose(float(value), float(registry.total({"pit_ce": 1.0}, settings, {
        "track_logits": logits, "track_targets": jnp.asarray(tracks)})[0]), rtol=1e-6)
