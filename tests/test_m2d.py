"""M2D in Flax: parity with a plainly written PyTorch ViT through the checkpoint converter, the
converter's errors, the ViT-B parameter count, and report 004's tagger (1c / 4c, spatial-token
masking, auxiliary heads).

The PyTorch side below is our own transcription of what nttcslab/m2d `examples/portable_m2d.py`
computes (timm ViT blocks, `LocalViT.forward_encoder`, `PortableM2D.encode_lms`); the parity
tests skip where PyTorch is absent.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jax_asc.models import build, convert
from jax_asc.models.m2d import M2DEncoder, M2DTagger

P = convert.M2D_PREFIX
DIM, DEPTH, HEADS, PATCH, SIZE = 32, 3, 2, 16, (32, 75)   # grid 2 × 4; a chunk drops 11 frames
TINY = dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, patch_size=PATCH, input_size=SIZE)


def _fake_state(rng, dim=DIM, depth=DEPTH, hidden=4 * DIM, patch=PATCH, patches=8):
  """An M2D backbone state dict (timm names, EVAR's prefix) of random numpy arrays."""
  shapes = {"patch_embed.proj.weight": (dim, 1, patch, patch), "patch_embed.proj.bias": (dim,),
            "pos_embed": (1, 1 + patches, dim), "cls_token": (1, 1, dim),
            "norm.weight": (dim,), "norm.bias": (dim,), "norm_stats": (2,)}
  for i in range(depth):
    b = f"blocks.{i}."
    shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                   b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                   b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                   b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                   b + "mlp.fc1.weight": (hidden, dim), b + "mlp.fc1.bias": (hidden,),
                   b + "mlp.fc2.weight": (dim, hidden), b + "mlp.fc2.bias": (dim,)})
  return {P + k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _evar_head(state, in_dim, rng):
  """EVAR's fine-tuned head, which the encoder ignores (its width decides flat_features)."""
  state = dict(state)
  state.update({"module.head.mlp.mlp.0.weight": rng.standard_normal((527, in_dim)),
                "module.head.mlp.mlp.0.bias": np.zeros(527),
                "module.head.norm.running_mean": np.zeros(in_dim),
                "module.head.norm.running_var": np.ones(in_dim),
                "module.head.norm.num_batches_tracked": np.array(7)})
  return state


def _settings(info):
  return {k: info[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size",
                               "input_size", "flat_features")}


# --- the PyTorch reference ---------------------------------------------------------------------

def _torch_vit(torch):
  """A pre-LN ViT with timm's parameter names, written out in torch ops (random weights)."""
  nn = torch.nn
  grid_f, grid_t = SIZE[0] // PATCH, SIZE[1] // PATCH

  class Attention(nn.Module):
    def __init__(self):
      super().__init__()
      self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x):
      b, n, _ = x.shape
      q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
      w = torch.softmax(q @ k.transpose(-1, -2) * (DIM // HEADS) ** -0.5, dim=-1)
      return self.proj((w @ v).transpose(1, 2).reshape(b, n, DIM))

  class Mlp(nn.Module):
    def __init__(self):
      super().__init__()
      self.fc1, self.fc2 = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)

    def forward(self, x):
      return self.fc2(nn.functional.gelu(self.fc1(x)))

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.norm1, self.norm2 = nn.LayerNorm(DIM, eps=1e-6), nn.LayerNorm(DIM, eps=1e-6)
      self.attn, self.mlp = Attention(), Mlp()

    def forward(self, x):
      x = x + self.attn(self.norm1(x))
      return x + self.mlp(self.norm2(x))

  class PatchEmbed(nn.Module):
    def __init__(self):
      super().__init__()
      self.proj = nn.Conv2d(1, DIM, PATCH, stride=PATCH)

  class ViT(nn.Module):
    def __init__(self):
      super().__init__()
      self.patch_embed = PatchEmbed()
      self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
      self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid_f * grid_t, DIM))
      self.blocks = nn.ModuleList([Block() for _ in range(DEPTH)])
      self.norm = nn.LayerNorm(DIM, eps=1e-6)

    def forward_chunk(self, x):
      """(B, 1, F, t) → every block's output and the normed output, cls dropped."""
      x = self.patch_embed.proj(x)                             # (B, D, F', T')
      t = x.shape[-1]
      x = x.flatten(2).transpose(1, 2)                         # f-major tokens
      pos = self.pos_embed[:, 1:].reshape(1, grid_f, grid_t, DIM)[:, :, :t].reshape(1, -1, DIM)
      x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1),
                     x + pos], dim=1)
      hidden = []
      for block in self.blocks:
        x = block(x)
        hidden.append(x[:, 1:])
      return hidden, self.norm(x)[:, 1:]

  torch.manual_seed(0)
  model = ViT()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
        p.copy_(1 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.2 * torch.randn_like(p))
  return model.eval()


def _torch_encode(torch, model, x, flat):
  """`PortableM2D.encode_lms` semantics: pad the last chunk to whole patches, encode chunks of
  SIZE[1] frames, arrange, concatenate in time. Returns (tokens, [block outputs])."""
  unit = SIZE[1]
  x = torch.tensor(x)[:, None]
  frames = x.shape[-1]
  n_chunk = (frames + unit - 1) // unit
  x = torch.nn.functional.pad(x, (0, (PATCH - frames % unit % PATCH) % PATCH))

  def arrange(emb):
    if flat:
      return emb
    b, n, d = emb.shape
    f = SIZE[0] // PATCH
    return emb.reshape(b, f, n // f, d).permute(0, 2, 1, 3).reshape(b, n // f, f * d)

  outs, hiddens = [], []
  with torch.no_grad():
    for i in range(n_chunk):
      hidden, out = model.forward_chunk(x[..., i * unit:(i + 1) * unit])
      outs.append(arrange(out))
      hiddens.append([arrange(h) for h in hidden])
  tokens = torch.cat(outs, dim=1).numpy()
  blocks = [torch.cat([h[k] for h in hiddens], dim=1).numpy() for k in range(DEPTH)]
  return tokens, blocks


@pytest.mark.parametrize("flat", [True, False])
def test_encoder_matches_torch_through_the_converter(flat):
  torch = pytest.importorskip("torch", reason="the reference needs PyTorch: make reference-deps")
  model = _torch_vit(torch)
  rng = np.random.default_rng(0)
  state = {P + k: v.numpy() for k, v in model.state_dict().items()}
  state[P + "norm_stats"] = np.array([-7.5, 4.25], np.float32)
  grid_f = SIZE[0] // PATCH
  state = _evar_head(state, DIM if flat else grid_f * DIM, rng)
  params, info = convert.m2d_params(state, input_size=SIZE, num_heads=HEADS)
  assert info["flat_features"] is flat and info["norm_stats"] == (-7.5, 4.25)
  assert _settings(info) == dict(TINY, mlp_ratio=4.0, flat_features=flat)
  encoder = M2DEncoder(**_settings(info))
  init = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, *SIZE)))["params"]
  assert jax.tree.map(np.shape, init) == jax.tree.map(np.shape, params)

  # (1, 40): a short input (positional grid cut to 3 columns, 8 zero frames of padding);
  # (2, 75): one chunk, its last 11 frames dropped; (2, 70): padded to 80, cut to 75 (4
  # columns); (1, 190): two whole chunks and a 40-frame one padded to 48. (Only two chunk
  # shapes, (1, 32, 48) and (2, 32, 75): eager JAX compiles each op once per shape.)
  for batch, frames, columns in ((1, 40, 3), (2, 75, 4), (2, 70, 4), (1, 190, 11)):
    x = rng.standard_normal((batch, SIZE[0], frames)).astype(np.float32)
    theirs, blocks = _torch_encode(torch, model, x, flat)
    ours, hidden = encoder.apply({"params": params}, x, return_hidden=(2, 3))
    expected = (batch, grid_f * columns, DIM) if flat else (batch, columns, grid_f * DIM)
    assert ours.shape == expected == theirs.shape
    assert encoder.num_tokens(frames) == expected[1]
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4)
    for k in (2, 3):   # 1-based block numbers; before the final norm
      np.testing.assert_allclose(np.asarray(hidden[k]), blocks[k - 1], rtol=1e-4, atol=1e-4)
  ours_4d = encoder.apply({"params": params}, x[..., None])
  np.testing.assert_allclose(np.asarray(ours_4d), theirs, rtol=1e-4, atol=1e-4)


# --- the converter -----------------------------------------------------------------------------

def test_converter_accepts_unprefixed_state_and_reads_settings():
  rng = np.random.default_rng(1)
  state = _fake_state(rng)
  params, info = convert.m2d_params(state, input_size=SIZE, num_heads=HEADS)
  plain = {k[len(P):]: v for k, v in state.items()}
  plain["head.weight"] = np.zeros((10, DIM))   # a timm head: known, ignored
  params_plain, info_plain = convert.m2d_params(plain, input_size=SIZE, num_heads=HEADS)
  jax.tree.map(np.testing.assert_array_equal, params, params_plain)
  assert info == info_plain and info["flat_features"] is False   # no EVAR head
  assert info["norm_stats_in_checkpoint"]
  np.testing.assert_array_equal(params["blocks_1"]["attn"]["qkv"]["kernel"],
                                state[P + "blocks.1.attn.qkv.weight"].T)
  np.testing.assert_array_equal(params["patch_embed"]["kernel"][:, :, 0, 5],
                                state[P + "patch_embed.proj.weight"][5, 0])

  del plain["norm_stats"]   # the reference's default for 2022 checkpoints
  _, info = convert.m2d_params(plain, input_size=SIZE, num_heads=HEADS)
  assert info["norm_stats"] == (-7.1, 4.2) and not info["norm_stats_in_checkpoint"]


def test_converter_names_missing_unused_and_misshapen_keys():
  rng = np.random.default_rng(2)
  state = _fake_state(rng)
  convert_ = lambda s: convert.m2d_params(s, input_size=SIZE, num_heads=HEADS)

  missing = dict(state)
  del missing[P + "blocks.1.mlp.fc2.bias"]
  with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.bias"):
    convert_(missing)
  for extra in (P + "blocks.0.ls1.gamma", "blocks.0.attn.q_norm.weight", "decoder_pos_embed"):
    with pytest.raises(ValueError, match=f"does not use.*{re.escape(extra)}"):
      convert_({**state, extra: np.zeros(DIM)})
  misshapen = {**state, P + "blocks.2.norm1.weight": np.zeros(DIM + 1)}
  with pytest.raises(ValueError, match=r"blocks\.2\.norm1\.weight.*\(33,\).*\(32,\)"):
    convert_(misshapen)
  with pytest.raises(ValueError, match=r"pos_embed.*\(1, 9, 32\).*\(1, 11, 32\)"):
    convert.m2d_params(state, input_size=(32, 80), num_heads=HEADS)   # a 2 × 5 grid
  with pytest.raises(ValueError, match="input_size"):   # 8 patches: no released model's grid
    convert.m2d_params(state, num_heads=HEADS)
  # The known non-backbone keys (EVAR's head and wrapper) pass.
  convert_({**_evar_head(state, DIM, rng), "module.ar.runtime.to_spec.mel_basis": np.zeros(3)})


def test_released_grid_and_folder_name_give_the_input_size(tmp_path):
  rng = np.random.default_rng(3)
  state = _fake_state(rng, depth=1, patches=5 * 62)
  _, info = convert.m2d_params(state, num_heads=HEADS)
  assert info["input_size"] == (80, 1001)
  folder = tmp_path / "m2d_as_vit_base-32x75p16x16p32k-240413_AS-FT_enconly"
  folder.mkdir()
  convert.save_npz(_evar_head(_fake_state(rng), DIM, rng), str(folder / "weights.npz"))
  params, info = convert.load_m2d(str(folder / "weights.npz"), num_heads=HEADS)
  assert info["input_size"] == SIZE and info["flat_features"] and info["depth"] == DEPTH
  assert params["pos_embed"].shape == (1, 9, DIM)


def test_vit_base_parameter_count():
  """At ViT-B sizes, 80 × 1001 (grid 5 × 62, 311 positions) and one input channel the encoder
  has timm's VisionTransformer count for that config without its head."""
  d, hidden, depth = 768, 3072, 12
  block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
  expected = (16 * 16 * 1 * d + d) + 311 * d + d + depth * block + 2 * d
  # Cross-check: timm's ViT-B/16 at 224² × 3 with 1000 classes has 86,567,656; drop the head
  # (768·1000 + 1000), two input channels of the patch kernel, and add 311 − 197 positions.
  assert expected == 86_567_656 - (768 * 1000 + 1000) - 2 * 256 * 768 + (311 - 197) * 768
  shapes = jax.eval_shape(M2DEncoder().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 80, 1001), jnp.float32))
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes)) == expected == 85_492_992


# --- the tagger --------------------------------------------------------------------------------

TAGGER = dict(TINY, track_input_dim=16, track_hidden_dim=8, aux_blocks=(1, 2))


def _variables(model, x, seed=0):
  """Random variables of `model`'s shapes from numpy (much faster on CPU than `init`, which
  compiles a random-number kernel for every parameter shape)."""
  rng = np.random.default_rng(seed)
  shapes = traverse_util.flatten_dict(jax.eval_shape(model.init, jax.random.key(0), x))
  fill = {"scale": lambda s: 1 + 0.1 * rng.standard_normal(s),
          "var": lambda s: rng.uniform(0.5, 2.0, s)}
  return traverse_util.unflatten_dict({
      path: jnp.asarray(fill.get(path[-1], lambda s: 0.1 * rng.standard_normal(s))(a.shape),
                        jnp.float32)
      for path, a in shapes.items()})


def test_tagger_1c_and_4c_shapes_and_the_shared_encoder():
  x1 = jax.random.normal(jax.random.key(1), (2, 1, *SIZE))
  tagger = build({"name": "m2d_tagger", **TAGGER})
  variables = _variables(tagger, x1)
  assert set(variables["params"]) == {"encoder", "head", "aux_head_1", "aux_head_2"}
  out = tagger.apply(variables, x1, return_features=True)
  assert out["logits"].shape == (2, 3, 19) and out["tokens"].shape == (2, 8, DIM)
  assert set(out["aux_logits"]) == {1, 2}
  assert all(v.shape == (2, 3, 19) for v in out["aux_logits"].values())
  np.testing.assert_array_equal(tagger.apply(variables, x1[:, 0]), out["logits"])   # (B, F, T)
  no_aux = M2DTagger(**dict(TAGGER, aux_blocks=()))   # the baseline tagger: no auxiliary heads
  params = {k: v for k, v in variables["params"].items() if not k.startswith("aux_head")}
  stats = {k: v for k, v in variables["batch_stats"].items() if not k.startswith("aux_head")}
  plain = no_aux.apply({"params": params, "batch_stats": stats}, x1, return_features=True)
  assert plain["aux_logits"] == {}
  np.testing.assert_array_equal(plain["logits"], out["logits"])

  x4 = jax.random.normal(jax.random.key(2), (2, 4, *SIZE))
  tagger4 = M2DTagger(channels=4, **TAGGER)
  variables4 = _variables(tagger4, x4)
  assert variables4["params"]["head"]["split"]["kernel"].shape[0] == 4 * DIM
  out4 = tagger4.apply(variables4, x4, return_features=True)
  assert out4["logits"].shape == (2, 3, 19) and out4["tokens"].shape == (2, 8, 4 * DIM)
  encoder = M2DEncoder(**TINY)
  per_channel = [encoder.apply({"params": variables4["params"]["encoder"]}, x4[:, c])
                 for c in range(4)]
  np.testing.assert_allclose(out4["tokens"], jnp.concatenate(per_channel, axis=-1),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="channels=4"):
    tagger4.apply(variables4, x1)


def test_spatial_masking_only_in_training_and_batch_stats_update():
  x = jax.random.normal(jax.random.key(1), (2, 4, *SIZE))
  masked, plain = M2DTagger(channels=4, spatial_mask_rate=0.3, **TAGGER), \
      M2DTagger(channels=4, **TAGGER)
  variables = _variables(plain, x)
  rngs = {"spatial_mask": jax.random.key(5)}
  eval_masked = masked.apply(variables, x)
  np.testing.assert_array_equal(eval_masked, plain.apply(variables, x))
  out, updated = masked.apply(variables, x, train=True, return_features=True, rngs=rngs,
                              mutable=["batch_stats"])
  ref, _ = plain.apply(variables, x, train=True, return_features=True, mutable=["batch_stats"])
  assert not np.allclose(out["logits"], ref["logits"])
  for k in (1, 2):
    assert not np.allclose(out["aux_logits"][k], ref["aux_logits"][k])
  # Zeroed channel tokens: whole D-wide slices of the concatenated tokens, about 30% of them.
  zero = np.all(np.asarray(out["tokens"]).reshape(2, 8, 4, DIM) == 0, axis=-1)
  assert 0.1 < zero.mean() < 0.5
  for head in ("head", "aux_head_1", "aux_head_2"):
    before = variables["batch_stats"][head]["token_norm"]["mean"]
    after = updated["batch_stats"][head]["token_norm"]["mean"]
    assert not np.allclose(before, after)


def test_tagger_jits_and_runs_in_bfloat16():
  x = jax.random.normal(jax.random.key(1), (2, 1, *SIZE))
  tagger = M2DTagger(**TAGGER)
  variables = _variables(tagger, x)
  eager = tagger.apply(variables, x)
  jitted = jax.jit(lambda v, x: tagger.apply(v, x))(variables, x)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
  low = jax.jit(lambda v, x: M2DTagger(dtype=jnp.bfloat16, **TAGGER).apply(
      v, x, return_features=True))(variables, x)
  assert low["tokens"].dtype == jnp.bfloat16 and low["logits"].dtype == jnp.float32
  assert np.abs(np.asarray(low["logits"]) - np.asarray(eager)).max() < 0.25
  flat = traverse_util.flatten_dict(variables["params"])
  assert all(a.dtype == jnp.float32 for a in flat.values())


def test_the_m2d_checkpoint_initialises_the_tagger_and_its_settings_are_checked(tmp_path):
  from configs import report004_s5
  from jax_asc.stages import model_init
  from jax_asc.train.state import TrainState
  rng = np.random.default_rng(5)
  folder = tmp_path / "m2d_as_vit_base-32x75p16x16p32k-240413_AS-FT_enconly"
  folder.mkdir()
  state_dict = _evar_head(_fake_state(rng), DIM, rng)
  state_dict[P + "norm_stats"] = np.array([-5.0, 3.0], np.float32)
  path = str(folder / "weights.npz")
  convert.save_npz(state_dict, path)
  config = report004_s5.get_config(f"tagger_1c,root={tmp_path},m2d={path},m2d_norm=-5:3")
  config.model.update(TINY, aux_blocks=(), track_input_dim=8, track_hidden_dim=8)
  model = build(config.model, num_classes=19)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 1) + SIZE))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                     batch_stats=variables["batch_stats"], opt_state=None, ema_params=None,
                     rng=jax.random.key_data(jax.random.key(0)))
  loaded = model_init.pretrained_initializer(config)(state)
  expected, _ = convert.m2d_params(state_dict, input_size=SIZE, num_heads=HEADS)
  np.testing.assert_array_equal(loaded.params["encoder"]["pos_embed"], expected["pos_embed"])
  np.testing.assert_array_equal(loaded.params["head"]["split"]["kernel"],
                                state.params["head"]["split"]["kernel"])   # the head stays
  config.frontend.norm_shift = 7.1
  with pytest.raises(ValueError, match="pass m2d_norm=-5.0:3.0"):
    model_init.pretrained_initializer(config)(state)
  config.frontend.norm_shift = 5.0
  config.model.depth = DEPTH + 1
  with pytest.raises(ValueError, match="the checkpoint's depth is 3, config.model.depth is 4"):
    model_init.pretrained_initializer(config)(state)
