"""Training parity with the PyTorch references, step for step (issue: training parity).

The reference CP-Mobile (`benchmarks/torch_reference.py`: the DCASE25 baseline `models/net.py`
and the DCASE23 GRN model `models/cp_mobile_clean.py`, same parameter tensors) gets a copy of
our initial weights; both sides then take K = 20 optimizer steps on the same batches
(augmentation off) with each optimizer the recipes use, under the same schedule:
* AdamW (decoupled decay, as `torch.optim.AdamW`) with 5 warm-up steps then cosine to 0, per
  step (`transformers.get_cosine_schedule_with_warmup`, DCASE24/25);
* Adam with coupled L2 (`torch.optim.Adam(weight_decay=…)`) under the DCASE23 per-epoch
  ramp-up × ramp-down factor (`LambdaLR` stepped once per epoch);
* SGD with momentum and coupled decay.
Our side is the real training step (`loop.Trainer`, native kernels where they build), our
initialisation and `optim.make_optimizer`; the reference side is plain torch. After 20 steps
the parameters, the BatchNorm running statistics, every step's loss and the evaluation-mode
logits must agree to float32 tolerance.

Skips without PyTorch (`make reference-deps`; CI installs it).
"""
import contextlib
import hashlib
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from jax_asc import models, native
from jax_asc.losses import classification
from jax_asc.train import loop
from jax_asc.train import mesh as mesh_lib
from jax_asc.train import optim

torch = pytest.importorskip("torch", reason="PyTorch (make reference-deps) is not installed")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import torch_reference  # noqa: E402

STEPS = 20
BATCH = 16
STEPS_PER_EPOCH = 4          # the DCASE23 schedule changes its factor once per epoch
MELS, FRAMES = 64, 33        # small inputs: the same network, a quick step

# (name in ours, torch optimizer factory, torch lr-lambda factory, stepped per "step"/"epoch")
OPTIMIZERS = {
    "adamw_warmup_cosine": dict(
        optimizer=dict(name="adamw", learning_rate=2e-3, weight_decay=1e-4),
        schedule=dict(name="warmup_cosine", warmup_steps=5, end_factor=0.0)),
    "adam_l2_dcase23": dict(
        optimizer=dict(name="adam", learning_rate=1e-2, weight_decay=1e-2),
        schedule=dict(name="dcase23", warmup_epochs=2, rampdown_start=2, rampdown_length=2,
                      last_value=0.005)),
    "sgd_momentum": dict(
        optimizer=dict(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=1e-3),
        schedule=dict(name="warmup_cosine", warmup_steps=3, end_factor=0.0)),
}


# ----------------------------------------------------------------------------- reference side
def dcase23_factor(warmup_epochs, rampdown_start, rampdown_length, last_value):
  """fschmid56/cpjku_dcase23 `run_training.py`: exp ramp-up × linear ramp-down, per epoch."""
  def factor(epoch):
    up = math.exp(-5.0 * (1.0 - max(epoch, 0.5) / warmup_epochs) ** 2) if (
        epoch < warmup_epochs) else 1.0
    if epoch <= rampdown_start:
      down = 1.0
    elif epoch < rampdown_start + rampdown_length:
      down = last_value + (1 - last_value) * (rampdown_length - epoch + rampdown_start) / (
          rampdown_length)
    else:
      down = last_value
    return up * down
  return factor


def torch_optimizer(model, spec):
  """(optimizer, scheduler, scheduler unit "step" | "epoch") as the references build them."""
  o, s = spec["optimizer"], spec["schedule"]
  if o["name"] == "adamw":
    opt = torch.optim.AdamW(model.parameters(), lr=o["learning_rate"], betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=o["weight_decay"])
  elif o["name"] == "adam":
    opt = torch.optim.Adam(model.parameters(), lr=o["learning_rate"], betas=(0.9, 0.999),
                           eps=1e-8, weight_decay=o["weight_decay"])
  else:
    opt = torch.optim.SGD(model.parameters(), lr=o["learning_rate"], momentum=o["momentum"],
                          weight_decay=o["weight_decay"])
  if s["name"] == "constant":
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0), "step"
  if s["name"] == "warmup_cosine":
    return opt, torch.optim.lr_scheduler.LambdaLR(
        opt, torch_reference.cosine_with_warmup(s["warmup_steps"], STEPS)), "step"
  factor = dcase23_factor(s["warmup_epochs"], s["rampdown_start"], s["rampdown_length"],
                          s["last_value"])
  return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor), "epoch"


def torch_names(path):
  """Our parameter / batch-stat path → the reference module's state-dict name."""
  top, rest = path[0], path[1:]
  if top.startswith("stem_"):
    prefix = f"stem.{top[5:]}"
  elif top.startswith("b") and top[1:].isdigit():
    prefix = f"blocks.{int(top[1:]) - 1}"
    if rest[0] == "grn":
      return f"{prefix}.grn.{rest[1]}"
    prefix, rest = f"{prefix}.{rest[0]}", rest[1:]
  elif top in ("head_conv", "head_norm"):
    prefix, rest = "head", (("conv",) if top == "head_conv" else ("norm",)) + rest
  else:
    raise KeyError(path)
  layer, leaf = rest[0], rest[-1]
  index = 0 if layer == "conv" else 1
  name = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
          "var": "running_var"}[leaf]
  return f"{prefix}.{index}.{name}"


def to_torch_layout(value):
  value = np.asarray(value, np.float32)
  return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value   # HWIO → OIHW


def flat(tree):
  return {tuple(k.key for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ----------------------------------------------------------------------------- our side
def our_config(spec):
  config = common.base_config()
  config.batch_size, config.num_epochs = BATCH, STEPS // STEPS_PER_EPOCH
  config.optimizer.update(spec["optimizer"])
  config.schedule.update(spec["schedule"])
  return config


def our_trainer(variant, config):
  model = models.build(common.cp_mobile(variant))

  def loss(output, batch, ctx):
    return classification.cross_entropy(output, batch["label"]), {}, ctx.loss_state

  task = loop.Task(model=model, make_inputs=lambda key, batch: batch["features"], loss=loss)
  example = {"features": np.zeros((BATCH, MELS, FRAMES), np.float32),
             "label": np.zeros((BATCH,), np.int32)}
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          jnp.zeros((BATCH, MELS, FRAMES)))["params"]
  tx, _ = optim.make_optimizer(config.optimizer, config.schedule, params, STEPS, STEPS_PER_EPOCH)
  trainer = loop.Trainer(task, tx, mesh)
  return trainer, trainer.init(config.seed, example)


def batches(seed):
  """STEPS batches of log-mel-like features (around −5, as ln(mel + 1e-5)) with a class-specific
  band 3 above the rest, so the loss falls within 20 steps and the gradients are not noise."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(STEPS):
    labels = rng.integers(0, 10, BATCH).astype(np.int32)
    x = rng.normal(-5.0, 1.0, (BATCH, MELS, FRAMES)).astype(np.float32)
    bands = np.arange(MELS) * 10 // MELS
    x += 3.0 * (bands[None, :, None] == labels[:, None, None])
    out.append({"features": x, "label": labels})
  return out


def copy_into_torch(reference, variables):
  state = reference.state_dict()
  for collection in ("params", "batch_stats"):
    for path, value in flat(variables[collection]).items():
      name = torch_names(path)
      assert state[name].shape == to_torch_layout(value).shape, name
      state[name] = torch.from_numpy(to_torch_layout(value).copy())
  reference.load_state_dict(state)


def run_reference(variant, spec, variables, data, held_out, dtype=torch.float64,
                  perturb=0.0, seed=3):
  """K steps of the reference from `variables` (optionally each weight scaled by
  1 + perturb·N(0, 1)): (losses (K,), {state-dict name: float64 array}, eval logits)."""
  torch.manual_seed(0)
  reference = torch_reference.CPMobile(**torch_reference.VARIANTS[variant])
  copy_into_torch(reference, variables)
  reference = reference.to(dtype)
  if perturb:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
      for p in reference.parameters():
        p.mul_(1 + perturb * torch.randn(p.shape, generator=generator, dtype=dtype))
  opt, scheduler, unit = torch_optimizer(reference, spec)
  losses = []
  reference.train()
  for step, batch in enumerate(data):
    opt.zero_grad(set_to_none=True)
    logits = reference(torch.from_numpy(batch["features"][:, None]).to(dtype))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["label"]).long())
    loss.backward()
    opt.step()
    if unit == "step" or (step + 1) % STEPS_PER_EPOCH == 0:
      scheduler.step()
    losses.append(loss.item())
  reference.eval()
  with torch.no_grad():
    logits = reference(torch.from_numpy(held_out[:, None]).to(dtype)).double().numpy()
  state = {k: v.detach().double().numpy() for k, v in reference.state_dict().items()
           if v.is_floating_point()}
  return np.array(losses), state, logits


_REFERENCE_RUNS = {}


def reference_runs(variant, optimizer, start, data, held_out):
  """The exact (float64) reference run and the four runs that measure its spread (float32, and
  three from perturbed weights), from `start` on `data`. Computed once per model, optimizer and
  start weights (digest): the XLA-forms case starts where its native twin does and reads the
  same reference runs."""
  digest = hashlib.sha256(b"".join(np.asarray(v).tobytes() for v in jax.tree.leaves(start)))
  key = (variant, optimizer, digest.hexdigest())
  if key not in _REFERENCE_RUNS:
    spec = OPTIMIZERS[optimizer]
    exact = run_reference(variant, spec, start, data, held_out)
    spreads = [run_reference(variant, spec, start, data, held_out, dtype=torch.float32)] + [
        run_reference(variant, spec, start, data, held_out, perturb=1e-7, seed=seed)
        for seed in (3, 4, 5)]
    _REFERENCE_RUNS[key] = exact, spreads
  return _REFERENCE_RUNS[key]


def relative(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-12))


# Every optimizer on the DCASE25 model; the DCASE23 (GRN) model with its own recipe's Adam + L2;
# XLA's forms (what GPUs and TPUs run) once. (The suite's time is shared.)
CASES = [("dcase25", optimizer, "native") for optimizer in sorted(OPTIMIZERS)] + [
    ("dcase23", "adam_l2_dcase23", "native"), ("dcase25", "adamw_warmup_cosine", "xla")]


@pytest.mark.parametrize("variant,optimizer,form", CASES)
def test_twenty_steps_match_the_reference(variant, optimizer, form):
  """Our 20 steps follow the reference's exact (float64) trajectory as closely as its own float32
  run does.

  "Float tolerance" here is measured, not guessed: a ReLU whose input lies within rounding of 0
  flips with float32 noise and moves every gradient by ~1/(positions per channel) (~1e-3 at
  these sizes), and 20 steps amplify that. So the envelope of each compared quantity is the
  largest deviation from the float64 reference of (a) the reference in float32 and (b) three
  runs of the reference from weights perturbed by 1e-7 relative; ours must stay within 4× that
  envelope
  (plus a float32 floor) at every step. Early steps, before any flip, are compared to ~1e-6.
  `form`: our native CPU kernels, or XLA's forms (GPU, TPU, no compiler)."""
  if form == "native" and not native.available():
    pytest.skip(f"native CPU kernels not in use here: {native.status().reason}")
  spec = OPTIMIZERS[optimizer]
  trainer, state = our_trainer(variant, our_config(spec))
  start = {"params": state.params, "batch_stats": state.batch_stats}
  data, held_out = batches(seed=1), batches(seed=2)[0]["features"]
  exact, spreads = reference_runs(variant, optimizer, start, data, held_out)

  our_losses = []
  for batch in data:
    with native.disabled() if form == "xla" else contextlib.nullcontext():
      state, metrics = trainer.train_step(state, batch)
    our_losses.append(float(metrics["loss"]))
  our_logits = np.asarray(trainer.task.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, jnp.asarray(held_out),
      train=False))

  # The reference learns on this data: otherwise equal trajectories would prove little.
  assert exact[0][-4:].mean() < exact[0][:4].mean() - 0.1, exact[0]
  envelope = np.maximum.accumulate(np.max([np.abs(s[0] - exact[0]) for s in spreads], axis=0))
  np.testing.assert_array_less(np.abs(np.array(our_losses) - exact[0]), 4 * envelope + 2e-6)
  # Each tensor is compared on its own, except the GRN scalars (γ, β of every block), which
  # are compared as one vector: a scalar that adds to every activation has a gradient summed
  # over ~1e5 cancelling terms, so one alone is a near-random walk even for the reference.
  groups = {}
  for collection in ("params", "batch_stats"):
    for path, value in flat(getattr(state, collection)).items():
      name = torch_names(path)
      key = "GRN γ, β" if ".grn." in name else f"{collection}/{'/'.join(path)} ({name})"
      groups.setdefault(key, []).append((name, to_torch_layout(value).ravel()))
  names = set()
  for key, members in groups.items():
    names.update(name for name, _ in members)
    pick = lambda state: np.concatenate([state[name].ravel() for name, _ in members])
    spread = max(relative(pick(s[1]), pick(exact[1])) for s in spreads)
    ours = relative(np.concatenate([v for _, v in members]), pick(exact[1]))
    assert ours <= 4 * spread + 1e-5, (f"{key}: ours {ours:.2e} from the reference, its own "
                                       f"spread {spread:.2e}")
  assert names == set(exact[1]) - {k for k in exact[1] if k.endswith("num_batches_tracked")}
  spread = max(relative(s[2], exact[2]) for s in spreads)
  assert relative(our_logits, exact[2]) <= 4 * spread + 1e-5


@pytest.mark.parametrize("variant", ["dcase25", "dcase23"])
def test_batch_norm_running_statistics_match_the_reference(variant):
  """With the learning rate 0 the weights stay put, so 20 training-mode passes update only the
  BatchNorm running statistics: no ReLU can flip and no chaos enters, and ours must equal
  torch's (momentum 0.1, the unbiased batch variance in the running average) to float32
  precision, as must the evaluation logits that use them."""
  spec = dict(optimizer=dict(name="sgd", learning_rate=0.0, momentum=0.0, weight_decay=0.0),
              schedule=dict(name="constant"))
  trainer, state = our_trainer(variant, our_config(spec))
  start = {"params": state.params, "batch_stats": state.batch_stats}
  data, held_out = batches(seed=1), batches(seed=2)[0]["features"]
  _, theirs, their_logits = run_reference(variant, spec, start, data, held_out)
  for batch in data:
    state, _ = trainer.train_step(state, batch)
  for path, value in flat(state.batch_stats).items():
    name = torch_names(path)
    assert relative(to_torch_layout(value), theirs[name]) < 2e-5, name
  logits = trainer.task.apply({"params": state.params, "batch_stats": state.batch_stats},
                              jnp.asarray(held_out), train=False)
  assert relative(logits, their_logits) < 1e-4


# ----------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("variant", ["dcase25", "dcase23"])
def test_initial_weights_have_the_reference_distribution(variant):
  """Per layer, the initial weights of ours and of the reference (its own init, 8 seeds each)
  are drawn from the same distribution: the same std (kaiming_normal fan_out: √(2/(out·kh·kw)),
  not divided by groups) within sampling error, zero mean, BatchNorm scale 1 and bias 0, GRN 0."""
  seeds = 8
  model = models.build(common.cp_mobile(variant))
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, MELS, FRAMES)), train=False))
  ours = [flat(init(jax.random.key(s))["params"]) for s in range(seeds)]
  theirs = []
  for s in range(seeds):
    torch.manual_seed(s)
    ref = torch_reference.CPMobile(**torch_reference.VARIANTS[variant])
    theirs.append({k: v.detach().numpy() for k, v in ref.state_dict().items()})
  for path in ours[0]:
    name = torch_names(path)
    a = np.stack([to_torch_layout(o[path]) for o in ours])
    b = np.stack([t[name] for t in theirs])
    assert a.shape == b.shape, name
    if path[-1] == "kernel":
      fan_out = b.shape[1] * b.shape[3] * b.shape[4]
      expected = math.sqrt(2.0 / fan_out)
      n = a.size
      # std of a sample std ≈ σ / √(2n); 6 standard errors either way.
      bound = 6 * expected / math.sqrt(2 * n)
      assert abs(a.std() - expected) < bound, (name, a.std(), expected)
      assert abs(b.std() - expected) < bound, (name, b.std(), expected)
      assert abs(a.mean()) < 6 * expected / math.sqrt(n), name
      # Untruncated normal: |w| > 2σ for 4.6 % of a normal's draws (truncation at 2σ
      # would leave none beyond 2σ).
      assert (np.abs(a) > 2 * expected).mean() > 0.03, name
    else:
      np.testing.assert_array_equal(a, b, err_msg=name)
