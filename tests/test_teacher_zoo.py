"""Report 002's CRNN and ViT teachers: sizes, shapes, MAC counts, and parity with PyTorch
(`torch.nn.GRU`; a ViT written out in torch ops) on the same random weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_asc import models
from jax_asc.eval import complexity
from jax_asc.models import crnn, vit
from jax_asc.models.crnn import CRNN
from jax_asc.models.vit import ViT

def _count(variables):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def _report002():
  from configs import report002_teachers
  return report002_teachers


@pytest.mark.parametrize("base", [18, 38, 72])
def test_crnn_sizes_report_002(base):
  """The plan's CRNN sizes (GRU 2·base units) land at ~128 K, ~560 K, ~2 M parameters."""
  model = CRNN(base_channels=base, rnn_hidden=2 * base)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 256, 43), jnp.float32))
  n = _count(shapes)
  assert n == crnn.expected_params(base_channels=base, rnn_hidden=2 * base)
  target = {18: 128_000, 38: 560_000, 72: 2_000_000}[base]
  assert abs(n - target) < 0.05 * target


def test_report002_sizes_are_what_the_config_says():
  """The parameter counts written in the report 002 config's docstring are the models' own."""
  config = _report002()
  doc = config.__doc__.replace(",", "")
  for role, frames in (("crnn128k_dirfms", 43), ("crnn2m_dirfms", 43), ("cpm560k_dirfms", 65),
                       ("cpm2m_dirfms", 65), ("vit5m_dirfms", 100)):
    cfg = config.get_config(role + ",root=/nowhere")
    model = models.build(cfg.model)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1, cfg.frontend.n_mels, frames), jnp.float32))
    assert str(_count(shapes)) in doc, (role, _count(shapes))


def test_crnn_shapes_and_mac_count_includes_every_recurrent_step():
  model = CRNN(base_channels=8, rnn_hidden=16)
  x = jax.random.normal(jax.random.key(0), (2, 256, 43))
  variables = model.init(jax.random.key(1), x)
  out = model.apply(variables, x, return_features=True)
  # 256 × 43 → pools (4,2),(4,2),(4,1),(2,1) → 2 × 10; GRU over 10 steps, 2 directions.
  assert out["cnn"].shape == (2, 2, 10, 32) and out["rnn"].shape == (2, 10, 32)
  assert out["logits"].shape == (2, 10)
  cost = complexity.count(model, (1, 256, 43))
  assert cost.params == crnn.expected_params(base_channels=8, rnn_hidden=16)
  gru_macs = sum(layer.macs for layer in cost.layers if "gru" in layer.path)
  h, steps, expected = 16, 10, 0
  for d_in in (32, 2 * h):   # two layers, each forward + backward
    per_direction = steps * (d_in * 3 * h + 3 * h) + steps * (h * 3 * h + 3 * h)
    expected += 2 * per_direction
  assert gru_macs == expected


def test_crnn_too_small_input_is_a_clear_error():
  with pytest.raises(ValueError, match="cannot be pooled"):
    CRNN().init(jax.random.key(0), jnp.zeros((1, 16, 43)))


def test_bidirectional_gru_matches_torch():
  torch = pytest.importorskip("torch", reason="the reference needs PyTorch: make reference-deps")
  torch.manual_seed(0)
  d_in, hidden, steps = 12, 7, 9
  reference = torch.nn.GRU(d_in, hidden, num_layers=2, bidirectional=True, batch_first=True)
  x = np.random.default_rng(0).normal(size=(3, steps, d_in)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x))[0].numpy()

  def direction(layer, suffix):
    g = lambda name: getattr(reference, f"{name}_l{layer}{suffix}").detach().numpy()
    return {"input": {"kernel": g("weight_ih").T, "bias": g("bias_ih")},
            "hidden": {"kernel": g("weight_hh").T, "bias": g("bias_hh")}}

  out = jnp.asarray(x)
  for layer in range(2):
    fwd = crnn.GRUDirection(hidden).apply({"params": direction(layer, "")}, out)
    bwd = crnn.GRUDirection(hidden, reverse=True).apply({"params": direction(layer, "_reverse")},
                                                        out)
    out = jnp.concatenate([fwd, bwd], axis=-1)
  np.testing.assert_allclose(np.asarray(out), expected, atol=2e-6)


@pytest.mark.parametrize("dims", [(64, 4, 4), (192, 12, 3)])
def test_vit_sizes(dims):
  width, depth, heads = dims
  model = ViT(embed_dim=width, depth=depth, num_heads=heads)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 128, 100), jnp.float32))
  assert _count(shapes) == vit.expected_params(embed_dim=width, depth=depth)
  if width == 192:   # ViT-Tiny at 10 classes, 8 × 6 patches
    assert _count(shapes) == 5_399_434


def test_vit_shapes_and_errors():
  model = ViT(embed_dim=32, depth=1, num_heads=4, patch_size=8, input_size=(32, 40))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 40)))
  out = model.apply(variables, jnp.ones((2, 32, 24)), return_features=True)   # shorter input
  assert out["tokens"].shape == (2, 1 + 4 * 3, 32) and out["logits"].shape == (2, 10)
  with pytest.raises(ValueError, match="positional"):
    model.apply(variables, jnp.ones((1, 32, 48)))


def _torch_vit(torch, params, x, patch, heads):
  """ViT forward written out in torch ops (pre-LN blocks, exact GELU), from our parameters: an
  independent check of the patching, token order, attention and block arithmetic (the parameter
  layout is ours; there is no PyTorch checkpoint of this ViT to convert)."""
  t = lambda a: torch.tensor(np.asarray(a, np.float32))
  F = torch.nn.functional
  kernel = t(params["patch_embed"]["kernel"]).permute(3, 2, 0, 1)   # HWIO → OIHW
  y = F.conv2d(t(x)[:, None], kernel, t(params["patch_embed"]["bias"]), stride=patch)
  batch, dim, f, steps = y.shape
  y = y + t(params["pos_embed"])[:, :, :steps].permute(0, 3, 1, 2)
  y = y.flatten(2).transpose(1, 2)                                 # frequency-major tokens
  y = torch.cat([t(params["cls_token"]).expand(batch, 1, dim), y], dim=1)
  ln = lambda v, p: F.layer_norm(v, (dim,), t(p["scale"]), t(p["bias"]), eps=1e-6)
  dense = lambda v, p: v @ t(p["kernel"]) + t(p["bias"])
  i = 0
  while f"blocks_{i}" in params:
    p = params[f"blocks_{i}"]
    h = ln(y, p["norm1"])
    qkv = dense(h, p["attn"]["qkv"]).reshape(batch, -1, 3, heads, dim // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) * (dim // heads) ** -0.5, dim=-1) @ v
    y = y + dense(a.transpose(1, 2).reshape(batch, -1, dim), p["attn"]["proj"])
    h = F.gelu(dense(ln(y, p["norm2"]), p["fc1"]))
    y = y + dense(h, p["fc2"])
    i += 1
  y = ln(y, params["norm"])
  return (y[:, 0] @ t(params["head"]["kernel"]) + t(params["head"]["bias"])).numpy()


def test_vit_matches_a_torch_vit():
  torch = pytest.importorskip("torch", reason="the reference needs PyTorch: make reference-deps")
  model = ViT(embed_dim=32, depth=2, num_heads=4, patch_size=8, input_size=(32, 40))
  x = np.random.default_rng(0).normal(size=(2, 32, 40)).astype(np.float32)
  params = model.init(jax.random.key(0), jnp.asarray(x))["params"]
  # A non-zero head (the init's is zero, which would hide everything before it).
  params["head"]["kernel"] = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, x))
  np.testing.assert_allclose(ours, _torch_vit(torch, params, x, 8, 4), atol=2e-5)


def test_report002_runs_on_1s_segments_and_counts_the_student_there():
  """Report 002's full runs cut TAU20 into 1-s segments; the student is counted on one segment
  (the d23 CP-Mobile: 126,952 parameters, 28,893,268 MACs, within the DCASE limits), not on the
  10-s clip (~289 M MACs)."""
  from jax_asc.stages import common as stage_common
  config = _report002()
  for role in config.ROLES:
    assert config.get_config(role + ",root=/nowhere").data.segment_seconds == 1.0, role
  student = config.get_config("student,root=/nowhere")
  cost = stage_common.model_complexity(student, 10, int(student.data.sample_rate * 1.0))
  assert (cost.params, cost.macs) == (126_952, 28_893_268)
  assert cost.macs <= complexity.DCASE_MAX_MACS


def test_report002_unknown_teacher_is_a_clear_error():
  config = _report002()
  with pytest.raises(ValueError, match="role must be one of"):
    config.get_config("cnn14_dirfms,smoke")
  with pytest.raises(ValueError, match="architecture must be one of"):
    config.split_teacher("resnet50_dirfms")
