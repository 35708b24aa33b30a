"""The BEATs teacher of report 003 (ContrastASC): the Kaldi fbank preset, the encoder, the
classifier with its heads, the checkpoint converter and its model_init hook.

Parity against `torchaudio.compliance.kaldi.fbank` and the independent PyTorch encoder of
`openbeats==0.1.1` (built from a tiny cfg with random weights, offline) skips where they are
absent; everything else runs on a tiny encoder and tensors made here.
"""
import ml_collections
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jax_asc import native
from jax_asc.audio import frontends
from jax_asc.models import beats, build, convert

SR = 16000
FBANK_MEAN, FBANK_STD = 15.41663, 6.55582
# A tiny BEATs cfg in the checkpoint's format (every key of the reference's BEATsConfig).
TINY_CFG = dict(
    input_patch_size=16, embed_dim=32, conv_bias=False, encoder_layers=2, encoder_embed_dim=64,
    encoder_ffn_embed_dim=128, encoder_attention_heads=4, activation_fn="gelu",
    layer_wise_gradient_decay_ratio=1.0, layer_norm_first=False, deep_norm=True, dropout=0.0,
    attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0,
    conv_pos=16, conv_pos_groups=4, relative_position_embedding=True, num_buckets=32,
    max_distance=40, gru_rel_pos=True, finetuned_model=False, predictor_dropout=0.0,
    predictor_class=527)
TINY = convert.beats_model_fields(TINY_CFG)
# openbeats' frozen all-ones convolutions that carry its padding mask (not in BEATs checkpoints).
OPENBEATS_MASK_CONVS = {"patch_embedding_pad.weight", "raw2fbank_pad.weight"}


def _clips(rng, lengths):
  """Seeded noise plus a tone per clip, float32 in [-1, 1]."""
  out = []
  for n in lengths:
    t = np.arange(n) / SR
    out.append((0.05 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 700.0 * t))
               .astype(np.float32))
  return out


def _kaldi_reference(wave):
  """BEATs.preprocess of one clip with torchaudio: (frames, 128)."""
  torch = pytest.importorskip("torch")
  kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
  fbank = kaldi.fbank(torch.from_numpy(wave)[None] * 2 ** 15, num_mel_bins=128,
                      sample_frequency=SR, frame_length=25, frame_shift=10)
  return ((fbank.numpy() - FBANK_MEAN) / (2 * FBANK_STD)).astype(np.float32)


def _torch_state(cfg, rng):
  """A BEATs state dict in the checkpoint's names and layouts, random float32 arrays."""
  f = convert.beats_model_fields(cfg)
  p, e, d = f["input_patch_size"], f["embed_dim"], f["encoder_embed_dim"]
  ffn, h, k = f["encoder_ffn_embed_dim"], f["encoder_attention_heads"], f["conv_pos"]
  shapes = {"patch_embedding.weight": (e, 1, p, p), "layer_norm.weight": (e,),
            "layer_norm.bias": (e,), "post_extract_proj.weight": (d, e),
            "post_extract_proj.bias": (d,), "encoder.pos_conv.0.bias": (d,),
            "encoder.pos_conv.0.weight_g": (1, 1, k),
            "encoder.pos_conv.0.weight_v": (d, d // f["conv_pos_groups"], k),
            "encoder.layer_norm.weight": (d,), "encoder.layer_norm.bias": (d,)}
  for i in range(f["encoder_layers"]):
    b = f"encoder.layers.{i}"
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
      shapes[f"{b}.self_attn.{name}.weight"] = (d, d)
      shapes[f"{b}.self_attn.{name}.bias"] = (d,)
    shapes[f"{b}.self_attn.relative_attention_bias.weight"] = (f["num_buckets"], h)
    shapes[f"{b}.self_attn.grep_linear.weight"] = (8, d // h)
    shapes[f"{b}.self_attn.grep_linear.bias"] = (8,)
    shapes[f"{b}.self_attn.grep_a"] = (1, h, 1, 1)
    for name in ("self_attn_layer_norm", "final_layer_norm"):
      shapes[f"{b}.{name}.weight"] = (d,)
      shapes[f"{b}.{name}.bias"] = (d,)
    shapes[f"{b}.fc1.weight"], shapes[f"{b}.fc1.bias"] = (ffn, d), (ffn,)
    shapes[f"{b}.fc2.weight"], shapes[f"{b}.fc2.bias"] = (d, ffn), (d,)
  state = {n: rng.standard_normal(s).astype(np.float32) * 0.2 for n, s in shapes.items()}
  table = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
  for i in range(1, f["encoder_layers"]):   # one shared module, repeated in the state dict
    state[f"encoder.layers.{i}.self_attn.relative_attention_bias.weight"] = table
  return state


def _shapes(tree):
  return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


# ----------------------------------------------------------------------------- frontend
def test_beats_fbank_matches_torchaudio_kaldi():
  """The "beats" preset = BEATs.preprocess (kaldi.fbank of wav·2^15, normalised), batched, for
  clips of several lengths (frames = 1 + (S − 400) // 160)."""
  settings = frontends.settings_from_config({"preset": "beats"})
  assert settings == frontends.BEATS and not frontends.native_mel_supported(settings)
  rng = np.random.default_rng(0)
  for length, batch in ((16000, 2), (4567, 1)):
    waves = _clips(rng, [length] * batch)
    ours = np.asarray(frontends.log_mel(jnp.asarray(np.stack(waves)), settings))
    assert ours.shape == (batch, 128, settings.num_frames(length))
    for i, wave in enumerate(waves):
      ref = _kaldi_reference(wave)
      assert ref.shape[0] == 1 + (length - 400) // 160
      np.testing.assert_allclose(ours[i].T, ref, atol=1e-4, rtol=0)


def test_beats_preset_takes_the_xla_path_and_others_keep_their_defaults():
  """Kaldi framing is never given to the CPU kernel (it has no per-frame DC removal or
  pre-emphasis): with the kernels on or off the features are the same; the new settings'
  defaults leave every other preset as it was."""
  wave = jnp.asarray(np.stack(_clips(np.random.default_rng(1), [3200])))
  lowered = jax.jit(lambda w: frontends.log_mel(w, frontends.BEATS)).lower(wave).as_text()
  assert "@jax_asc_mel_spectrogram(" not in lowered
  on = frontends.log_mel(wave, frontends.BEATS)
  with native.disabled():
    off = frontends.log_mel(wave, frontends.BEATS)
  np.testing.assert_array_equal(np.asarray(on), np.asarray(off))
  for name, preset in frontends.PRESETS.items():
    if name != "beats":
      assert (preset.framing, preset.remove_dc, preset.input_scale, preset.log_floor) == (
          "stft", False, 1.0, False), name
  with pytest.raises(ValueError, match="center=False"):
    frontends.MelSettings(framing="kaldi")
  with pytest.raises(ValueError, match="remove_dc"):
    frontends.MelSettings(remove_dc=True)


def test_frame_padding_mask_keeps_the_frames_of_the_clip_alone():
  """A clip padded at the end: its valid frames are those it has alone, with equal features."""
  settings = frontends.BEATS
  long, short = _clips(np.random.default_rng(2), [8000, 5321])
  batch = np.stack([long, np.pad(short, (0, long.size - short.size))])
  sample_padding = np.arange(long.size)[None] >= np.array([long.size, short.size])[:, None]
  frames = np.asarray(frontends.frame_padding_mask(jnp.asarray(sample_padding), settings))
  n_short = settings.num_frames(short.size)
  assert frames.shape == (2, settings.num_frames(long.size))
  assert (~frames).sum(1).tolist() == [frames.shape[1], n_short]
  batched = np.asarray(frontends.log_mel(jnp.asarray(batch), settings))
  alone = np.asarray(frontends.log_mel(jnp.asarray(short[None]), settings))
  np.testing.assert_allclose(batched[1, :, :n_short], alone[0], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- encoder
def _openbeats(cfg, seed=0):
  """openbeats' encoder from a cfg with every parameter randomised (its init leaves biases 0
  and grep_a 1, which would hide a misplaced bias or gate), in eval mode."""
  torch = pytest.importorskip("torch")
  encoder_module = pytest.importorskip("openbeats.beats_encoder")
  torch.manual_seed(seed)
  model = encoder_module.BeatsEncoder(input_size=1, beats_config=dict(cfg)).eval()
  with torch.no_grad():
    for _, value in model.named_parameters():
      value.add_(torch.randn_like(value) * 0.1)
  encoder_module.freeze_conv_module(model.patch_embedding_pad)
  encoder_module.freeze_conv_module(model.raw2fbank_pad)
  return model


def test_encoder_matches_openbeats_from_an_official_format_checkpoint(tmp_path):
  """A {cfg, model, label_dict} .pt written from openbeats' random weights: openbeats loads it
  with every tensor (its strict=False load checked here), ours converts it (load_beats); the
  tokens agree on a padded batch, and the .npz copy gives the same params."""
  torch = pytest.importorskip("torch")
  reference = _openbeats(TINY_CFG)
  state = {k: v for k, v in reference.state_dict().items() if k not in OPENBEATS_MASK_CONVS}
  path = str(tmp_path / "beats_tiny.pt")
  torch.save({"cfg": TINY_CFG, "model": state, "label_dict": {}}, path)
  fresh = _openbeats(TINY_CFG, seed=1)
  loaded = fresh.load_state_dict(torch.load(path)["model"], strict=False)
  assert set(loaded.missing_keys) == OPENBEATS_MASK_CONVS and not loaded.unexpected_keys

  cfg, params = convert.load_beats(path)
  assert cfg == TINY_CFG
  rng = np.random.default_rng(3)
  raw = (rng.standard_normal((2, 100, 128)) * 6 + FBANK_MEAN).astype(np.float32)  # (B, T, 128)
  lengths = np.array([100, 70])
  with torch.no_grad():
    ref, ref_lengths, _ = fresh(torch.from_numpy(raw), torch.from_numpy(lengths),
                                waveform_input=False)
  fbank = ((raw - FBANK_MEAN) / (2 * FBANK_STD)).astype(np.float32)
  frame_padding = np.arange(100)[None] >= lengths[:, None]
  encoder = beats.BEATsEncoder(**convert.beats_model_fields(cfg))
  tokens, padding = jax.jit(encoder.apply)({"params": params},
                                           jnp.asarray(fbank.transpose(0, 2, 1)),
                                           jnp.asarray(frame_padding))
  assert tokens.shape == ref.shape == (2, 6 * 8, 64)
  assert (~np.asarray(padding)).sum(1).tolist() == ref_lengths.tolist() == [48, 32]
  np.testing.assert_allclose(np.asarray(tokens), ref.numpy(), atol=1e-4, rtol=0)
  time_major = beats.BEATsEncoder(**convert.beats_model_fields(cfg), input_layout="time_mel")
  np.testing.assert_array_equal(
      np.asarray(jax.jit(time_major.apply)({"params": params}, jnp.asarray(fbank),
                                           jnp.asarray(frame_padding))[0]), np.asarray(tokens))

  npz = str(tmp_path / "beats_tiny.npz")
  convert.save_beats_npz(cfg, state, npz)
  cfg_npz, params_npz = convert.load_beats(npz)
  assert cfg_npz == cfg
  jax.tree.map(np.testing.assert_array_equal, params_npz, params)


def test_padded_batch_equals_unpadded_singles(classifier):
  """Waveforms → fbank → classifier: a clip padded at the end in a batch gives the tokens,
  embedding, projection and logits it gives alone."""
  model, variables = classifier
  long, short = _clips(np.random.default_rng(4), [8000, 5321])
  batch = np.stack([long, np.pad(short, (0, long.size - short.size))])
  sample_padding = np.arange(long.size)[None] >= np.array([long.size, short.size])[:, None]
  settings = frontends.BEATS

  @jax.jit
  def features(wave, sample_padding):
    fbank = frontends.log_mel(wave, settings)
    padding = (None if sample_padding is None
               else frontends.frame_padding_mask(sample_padding, settings))
    return model.apply(variables, fbank, return_features=True, padding_mask=padding)

  together = features(jnp.asarray(batch), jnp.asarray(sample_padding))
  for i, clip in enumerate((long, short)):
    alone = features(jnp.asarray(clip[None]), None)
    n = alone["tokens"].shape[1]
    assert (~np.asarray(together["token_padding"][i])).sum() == n
    np.testing.assert_allclose(np.asarray(together["tokens"][i, :n]),
                               np.asarray(alone["tokens"][0]), atol=1e-5, rtol=0)
    for key in ("embedding", "projected", "logits"):
      np.testing.assert_allclose(np.asarray(together[key][i]), np.asarray(alone[key][0]),
                                 atol=1e-5, rtol=0, err_msg=key)


def test_relative_position_buckets_are_t5_bidirectional():
  """Exact below half of a direction's buckets, logarithmic to max_distance, capped."""
  buckets = beats.relative_position_buckets(1, 1000, num_buckets=320, max_distance=800)[0]
  assert buckets[:80].tolist() == [0] + list(range(161, 240))   # key − query = 0 … 79
  assert buckets[80] == 240 and buckets[700] < 319 and buckets[999] == 319
  assert np.all(np.diff(buckets[1:]) >= 0)
  backward = beats.relative_position_buckets(1000, 1, num_buckets=320, max_distance=800)[:, 0]
  assert backward[5] == 5 and backward[999] == 159


# ----------------------------------------------------------------------------- converter
def test_converter_maps_every_tensor_and_names_what_does_not_fit():
  rng = np.random.default_rng(5)
  state = _torch_state(TINY_CFG, rng)
  params = convert.beats_params(state, TINY_CFG)
  encoder = beats.BEATsEncoder(**TINY)
  expected = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 128, 32)))["params"]
  assert _shapes(params) == _shapes(expected)
  np.testing.assert_array_equal(params["encoder"]["layers_0"]["self_attn"]["grep_a"],
                                state["encoder.layers.0.self_attn.grep_a"].reshape(-1))

  def fails(state_dict, cfg, match):
    with pytest.raises(ValueError, match=match):
      convert.beats_params(state_dict, cfg)

  fails({k: v for k, v in state.items() if k != "encoder.layers.1.fc2.bias"}, TINY_CFG,
        r"missing \['encoder.layers.1.fc2.bias'\]")
  fails(dict(state, **{"encoder.extra.weight": np.zeros(3, np.float32)}), TINY_CFG,
        r"unused \['encoder.extra.weight'\]")
  fails(dict(state, **{"encoder.layers.0.fc1.weight": np.zeros((64, 64), np.float32)}),
        TINY_CFG, r"wrong shape: encoder.layers.0.fc1.weight: checkpoint \(64, 64\), model "
        r"\(128, 64\)")
  fails(state, dict(TINY_CFG, encoder_layers=1), r"unused \['encoder.layers.1")
  other = dict(state, **{"encoder.layers.1.self_attn.relative_attention_bias.weight":
                         np.zeros((32, 4), np.float32)})
  fails(other, TINY_CFG, "differs from encoder.layers.0.self_attn.relative_attention_bias")
  # A fine-tuned checkpoint's predictor is dropped only when its cfg says so.
  tuned = dict(state, **{"predictor.weight": np.zeros((527, 64), np.float32),
                         "predictor.bias": np.zeros(527, np.float32)})
  fails(tuned, TINY_CFG, r"unused \['predictor.bias', 'predictor.weight'\]")
  convert.beats_params(tuned, dict(TINY_CFG, finetuned_model=True))

  def cfg_fails(cfg, match):
    with pytest.raises(ValueError, match=match):
      convert.beats_model_fields(cfg)

  cfg_fails({k: v for k, v in TINY_CFG.items() if k != "encoder_layers"},
            r"lacks \['encoder_layers'\]")
  cfg_fails(dict(TINY_CFG, encoder_layer=2), r"unknown keys \['encoder_layer'\]")
  cfg_fails(dict(TINY_CFG, activation_fn="glu"), "activation_fn='glu'")
  cfg_fails(dict(TINY_CFG, conv_pos="16"), "conv_pos='16' is not a positive integer")
  cfg_fails(dict(TINY_CFG, layer_norm_first=True), "both deep_norm and layer_norm_first")
  cfg_fails(dict(TINY_CFG, dropout=1.5), r"dropout=1.5 is not a rate")
  cfg_fails(dict(TINY_CFG, encoder_layerdrop=1.5), r"encoder_layerdrop=1.5 is not a probability")
  cfg_fails(dict(TINY_CFG, layer_wise_gradient_decay_ratio=0), r"ratio=0 is not > 0")
  # The dropout rates and training settings are optional (none applied when absent); the cfg's
  # layer drop and gradient ratio reach the model; the predictor's settings are dropped.
  fields = convert.beats_model_fields({k: v for k, v in TINY_CFG.items()
                                       if k not in ("dropout", "encoder_layerdrop",
                                                    "layer_wise_gradient_decay_ratio")})
  assert fields["dropout"] == 0.0 and fields["encoder_layerdrop"] == 0.0
  assert fields["layer_wise_gradient_decay_ratio"] == 1.0 and "predictor_class" not in fields
  fields = convert.beats_model_fields(dict(TINY_CFG, encoder_layerdrop=0.05,
                                           layer_wise_gradient_decay_ratio=0.6))
  assert fields["encoder_layerdrop"] == 0.05 and fields["layer_wise_gradient_decay_ratio"] == 0.6


# ----------------------------------------------------------------------------- classifier
@pytest.fixture(scope="module")
def classifier():
  """The tiny classifier of `_model_config` and its variables (one jitted init)."""
  model = build(_model_config())
  return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 128, 48)))


def _model_config(**overrides):
  fields = dict(name="beats", **TINY, n_classes=10, head="cosine", cosine_scale=56.0,
                projection_dim=128, projection_hidden=64)
  return ml_collections.ConfigDict(dict(fields, **overrides))


def test_classifier_outputs_and_parameter_tree(classifier):
  model, variables = classifier
  params = variables["params"]
  assert set(params) == {"backbone", "projection", "head"}
  assert set(params["projection"]) == {"hidden", "out"} and set(params["head"]) == {"kernel"}
  assert params["head"]["kernel"].shape == (64, 10)
  x = jax.random.normal(jax.random.key(1), (2, 128, 48))
  out, logits = jax.jit(lambda v, x: (model.apply(v, x, return_features=True),
                                      model.apply(v, x)))(variables, x)
  assert out["logits"].shape == (2, 10) and out["embedding"].shape == (2, 64)
  assert out["tokens"].shape == (2, 3 * 8, 64) and out["projected"].shape == (2, 128)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out["projected"]), axis=-1), 1.0,
                             atol=1e-5)
  assert np.abs(np.asarray(out["logits"])).max() <= 56.0 + 1e-3   # γ · cosine
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(out["logits"]))
  init_shapes = lambda m: jax.eval_shape(m.init, jax.random.key(0), x)["params"]
  assert set(init_shapes(build(_model_config(head="linear")))["head"]) == {"kernel", "bias"}
  # The converted backbone drops into the classifier's tree.
  converted = convert.beats_params(_torch_state(TINY_CFG, np.random.default_rng(6)), TINY_CFG)
  assert _shapes(converted) == _shapes(params["backbone"])
  with pytest.raises(ValueError, match="head must be one of"):
    init_shapes(build(_model_config(head="arcface")))
  with pytest.raises(ValueError, match="has no setting"):
    build(_model_config(encoder_layer=2))


def test_jit_grad_smoke_with_dropout(classifier):
  """A jitted gradient step in training mode (dropout on): finite, nonzero for backbone and
  heads."""
  model = build(_model_config(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1))
  x = jax.random.normal(jax.random.key(1), (2, 128, 48))
  params = classifier[1]["params"]   # dropout rates change no parameter

  @jax.jit
  def grad(params, key):
    def loss(p):
      out = model.apply({"params": p}, x, train=True, return_features=True,
                        rngs={"dropout": key})
      return (jax.nn.logsumexp(out["logits"], -1) - out["logits"][:, 0]).mean() + (
          out["projected"][0] @ out["projected"][1])
    return jax.grad(loss)(params)

  grads = grad(params, jax.random.key(2))
  norms = {k: float(optax_norm(v)) for k, v in grads.items()}
  assert all(np.isfinite(n) and n > 0 for n in norms.values()), norms


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(tree)))


def test_layer_drop_skips_each_layer_with_its_probability_in_training_only():
  """`encoder_layerdrop` p (the reference's `TransformerEncoder.layerdrop`): in training, a layer
  is skipped (its input passes on) with probability p per forward pass; in evaluation never."""
  x = jax.random.normal(jax.random.key(1), (2, 32, 128))   # (B, T, mels)
  one_layer = dict(TINY, encoder_layers=1, input_layout="time_mel")
  kept_model = beats.BEATsEncoder(**one_layer)
  variables = kept_model.init(jax.random.key(0), x)
  kept, _ = kept_model.apply(variables, x, train=True)
  # What the layer reads: the transformer's input, after its LayerNorm (post-LN model).
  _, state = kept_model.apply(variables, x, train=True, capture_intermediates=True)
  skipped = state["intermediates"]["encoder"]["layer_norm"]["__call__"][0]
  assert float(jnp.abs(kept - skipped).max()) > 0.1

  dropping = beats.BEATsEncoder(**dict(one_layer, encoder_layerdrop=0.3))
  np.testing.assert_array_equal(dropping.apply(variables, x)[0], kept_model.apply(variables, x)[0])
  run = jax.jit(lambda key: dropping.apply(variables, x, train=True, rngs={"dropout": key})[0])
  outcomes = []
  for key in jax.random.split(jax.random.key(2), 200):
    out = run(key)
    distance = {name: float(jnp.abs(out - ref).max())
                for name, ref in (("kept", kept), ("skipped", skipped))}
    outcome = min(distance, key=distance.get)
    assert distance[outcome] < 1e-5, distance   # one or the other, to float rounding (jit)
    outcomes.append(outcome)
  # 200 draws at p = 0.3: 60 skips expected, standard deviation 6.5.
  assert 34 <= outcomes.count("skipped") <= 86, outcomes.count("skipped")

  every = beats.BEATsEncoder(**dict(TINY, encoder_layers=3, input_layout="time_mel",
                                    encoder_layerdrop=1.0))
  variables = every.init(jax.random.key(0), x)
  (out, _), state = every.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)},
                                capture_intermediates=True)
  np.testing.assert_allclose(out, state["intermediates"]["encoder"]["layer_norm"]["__call__"][0],
                             atol=1e-5)


def test_layer_wise_gradient_ratio_scales_each_layers_gradient_by_its_depth():
  """`layer_wise_gradient_decay_ratio` r (the reference's GradMultiply before each layer): the
  forward pass is unchanged; layer i of L gets r^(L-1-i) of its gradient, the parts below the
  layers r^L (the relative-position table, which every layer reads, gets a mix). r = 0.5
  scales by powers of two, exactly."""
  x = jax.random.normal(jax.random.key(1), (2, 32, 128))
  fields = dict(TINY, encoder_layers=3, input_layout="time_mel")
  plain, decayed = (beats.BEATsEncoder(**dict(fields, layer_wise_gradient_decay_ratio=r))
                    for r in (1.0, 0.5))
  params = plain.init(jax.random.key(0), x)["params"]

  def grads(model):
    return jax.grad(lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x, train=True)[0])))(
        params)

  np.testing.assert_array_equal(decayed.apply({"params": params}, x)[0],
                                plain.apply({"params": params}, x)[0])
  full, scaled = traverse_util.flatten_dict(grads(plain)), traverse_util.flatten_dict(
      grads(decayed))
  for path, g in full.items():
    if path[-1] == "relative_attention_bias":
      continue   # the shared table: every layer's share of its gradient has its own factor
    if path[0] == "encoder" and path[1].startswith("layers_"):
      factor = 0.5 ** (2 - int(path[1].split("_")[1]))
    else:
      factor = 0.5 ** 3
    np.testing.assert_allclose(scaled[path], factor * g, rtol=1e-6, atol=1e-12,
                               err_msg="/".join(path))


def test_model_init_beats_torch_loads_the_backbone_and_keeps_heads_fresh(tmp_path):
  from configs import common
  from jax_asc.stages import model_init
  from jax_asc.train.state import TrainState
  state_dict = _torch_state(TINY_CFG, np.random.default_rng(7))
  path = str(tmp_path / "beats_tiny.npz")
  convert.save_beats_npz(TINY_CFG, state_dict, path)
  config = common.base_config()
  config.model = _model_config()
  config.model_init.update(path=path, kind="beats_torch")
  params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(
      build(config.model).init, jax.random.key(0), jnp.zeros((1, 128, 32)))["params"])
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                     opt_state=None, ema_params=None,
                     rng=jax.random.key_data(jax.random.key(0)))
  loaded = model_init.pretrained_initializer(config)(state).params
  np.testing.assert_array_equal(
      loaded["backbone"]["encoder"]["layers_1"]["fc1"]["kernel"],
      state_dict["encoder.layers.1.fc1.weight"].T)
  np.testing.assert_array_equal(loaded["head"]["kernel"], params["head"]["kernel"])
  config.model.encoder_ffn_embed_dim = 96
  with pytest.raises(ValueError, match="encoder_ffn_embed_dim: checkpoint 128, config.model 96"):
    model_init.pretrained_initializer(config)(state)
