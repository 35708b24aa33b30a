"""The Qwen2-Audio teacher (report 004 §2.3): Whisper log-mels, the audio encoder, the
safetensors reader and the checkpoint converter.

Parity against transformers' `WhisperFeatureExtractor` and a tiny random `Qwen2AudioEncoder`
(built offline, no download) skips where transformers / PyTorch are absent; the reader and the
converter's errors run on tensors written here.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jax_asc.audio import whisper
from jax_asc.models import convert
from jax_asc.models.qwen_audio import QwenAudioEncoder, output_lengths

SR = 16000
# The tiny encoder of ../shared/reference/peers.md: 100 input frames, 50 positions, 25 outputs.
TINY = dict(num_mel_bins=128, d_model=64, num_layers=2, num_heads=4, ffn_dim=128,
            max_source_positions=50)


def _clip(rng, seconds, tones=(440.0, 2500.0)):
  """Seeded noise plus two tones, float32."""
  t = np.arange(int(seconds * SR)) / SR
  x = 0.05 * rng.standard_normal(t.size)
  for i, f in enumerate(tones):
    x += (0.3 / (i + 1)) * np.sin(2 * np.pi * f * t + i)
  return x.astype(np.float32)


def _batch(clips):
  """(B, max length) zero-padded waveforms and (B,) lengths."""
  lengths = np.array([len(c) for c in clips], np.int32)
  wave = np.zeros((len(clips), lengths.max()), np.float32)
  for i, c in enumerate(clips):
    wave[i, :len(c)] = c
  return wave, lengths


# --- Whisper features ------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_seconds", [30, 5])
def test_whisper_features_match_hf(chunk_seconds):
  """3-s and 7-s clips in a 30-s chunk (padded) and in a 5-s one (the 7-s clip truncated)."""
  transformers = pytest.importorskip("transformers")
  rng = np.random.default_rng(0)
  clips = [_clip(rng, 3.0), _clip(rng, 7.0, tones=(300.0, 5000.0))]
  extractor = transformers.WhisperFeatureExtractor(feature_size=128, chunk_length=chunk_seconds)
  ref = extractor(clips, sampling_rate=SR, return_attention_mask=True, padding="max_length",
                  return_tensors="np")
  settings = whisper.WhisperSettings(chunk_frames=chunk_seconds * SR // 160)
  assert settings.chunk_samples == chunk_seconds * SR
  np.testing.assert_allclose(whisper.mel_filters(settings), extractor.mel_filters, atol=1e-10)

  wave, lengths = _batch(clips)
  features, frames = whisper.log_mel(jnp.asarray(wave), settings, jnp.asarray(lengths))
  assert features.shape == (2, 128, settings.chunk_frames) and features.dtype == jnp.float32
  assert ref["input_features"].shape == features.shape
  np.testing.assert_allclose(np.asarray(features), ref["input_features"], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(np.asarray(frames), ref["attention_mask"].sum(-1))
  assert frames.dtype == jnp.int32


def test_whisper_lengths_are_traced_and_zero_the_tail():
  """Under jit with traced lengths; samples past a row's length do not count; a longer input
  is cut to the chunk; valid_frames = ceil(min(length, chunk) / hop)."""
  settings = whisper.WhisperSettings(chunk_frames=200)            # 2-s chunk
  rng = np.random.default_rng(1)
  clean = np.stack([_clip(rng, 2.5), _clip(rng, 2.5)])            # longer than the chunk
  lengths = np.array([12345, 40000], np.int32)
  clean[0, lengths[0]:] = 0.0
  noisy = clean.copy()
  noisy[0, lengths[0]:] = rng.standard_normal(noisy.shape[1] - lengths[0])
  fn = jax.jit(whisper.log_mel, static_argnums=1)
  f_noisy, n_noisy = fn(jnp.asarray(noisy), settings, jnp.asarray(lengths))
  f_clean, _ = whisper.log_mel(jnp.asarray(clean[:, :settings.chunk_samples]), settings,
                               jnp.asarray(lengths))
  np.testing.assert_allclose(np.asarray(f_noisy), np.asarray(f_clean), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(n_noisy), [78, 200])   # ceil(12345 / 160), capped
  _, n_all = whisper.log_mel(jnp.asarray(noisy[:, :1000]), settings)   # lengths None: all S
  np.testing.assert_array_equal(np.asarray(n_all), [7, 7])
  np.testing.assert_array_equal(whisper.valid_frames(np.array([0, 1, 160, 161, 10 ** 6]),
                                                     settings), [0, 1, 1, 2, 200])
  assert whisper.WhisperSettings(**settings.to_dict()) == settings


# --- the encoder -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory):
  """(torch module, our params) of a tiny random Qwen2AudioEncoder, converted through a
  safetensors file whose names carry the `audio_tower.` prefix."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = transformers.Qwen2AudioEncoderConfig(
      num_mel_bins=128, d_model=64, encoder_layers=2, encoder_attention_heads=4,
      encoder_ffn_dim=128, max_source_positions=50, attn_implementation="eager")
  torch.manual_seed(0)
  model = transformers.Qwen2AudioEncoder(config).eval()
  with torch.no_grad():   # move LayerNorm scales and biases off 1 and 0 too
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  state = {"audio_tower." + k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  try:
    from safetensors.numpy import save_file
  except ImportError:
    tower = state                            # the converter strips the prefix itself
  else:
    path = str(tmp_path_factory.mktemp("qwen") / "model.safetensors")
    save_file(state, path)
    tower = convert.qwen_audio_state_dict(path)
    assert set(tower) == {k[len("audio_tower."):] for k in state}
  encoder = QwenAudioEncoder(**TINY)
  params = convert.qwen_audio_params(tower, encoder)
  return torch, model, params


def _hf_mask(torch, len1, positions):
  """Qwen2AudioModel's 4-D additive mask: keys at or beyond len1 get the dtype's minimum."""
  keys = torch.arange(positions)[None, :] >= torch.as_tensor(len1)[:, None]      # (B, T')
  mask = torch.zeros(len(len1), 1, positions, positions)
  return mask.masked_fill(keys[:, None, None, :], torch.finfo(torch.float32).min)


def test_encoder_matches_hf_on_a_padded_batch(hf_tiny):
  torch, model, params = hf_tiny
  encoder = QwenAudioEncoder(**TINY)
  expected = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 128, 100)))["params"]
  shapes = lambda tree: {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}
  assert shapes(params) == shapes(expected)

  rng = np.random.default_rng(2)
  features = rng.standard_normal((2, 128, 100)).astype(np.float32)
  frames = np.array([60, 37], np.int32)
  len1, len2 = output_lengths(frames)
  ref_len1, ref_len2 = model._get_feat_extract_output_lengths(torch.as_tensor(frames))
  np.testing.assert_array_equal(len1, ref_len1.numpy())
  np.testing.assert_array_equal(len2, ref_len2.numpy())
  assert list(len1) == [30, 19] and list(len2) == [15, 9]

  apply = jax.jit(encoder.apply, static_argnames="keep_positions")
  with torch.no_grad():
    ref = model(torch.from_numpy(features),
                attention_mask=_hf_mask(torch, len1, 50)).last_hidden_state.numpy()
    ref_full = model(torch.from_numpy(features)).last_hidden_state.numpy()
  hidden, out_len2 = apply({"params": params}, features, frames)
  assert hidden.shape == (2, 25, 64) and hidden.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(hidden), ref, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(np.asarray(out_len2), len2)
  hidden_full, len2_full = apply({"params": params}, features)          # no mask: all frames
  np.testing.assert_allclose(np.asarray(hidden_full), ref_full, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(np.asarray(len2_full), [25, 25])

  # The transformer on the first 30 positions only (= max len1): the valid outputs are unchanged.
  kept, kept_len2 = apply({"params": params}, features, frames, keep_positions=30)
  assert kept.shape == (2, 15, 64)
  np.testing.assert_array_equal(np.asarray(kept_len2), len2)
  for b in range(2):
    np.testing.assert_allclose(np.asarray(kept[b, :len2[b]]), np.asarray(hidden[b, :len2[b]]),
                               atol=1e-5, rtol=0)


def test_encoder_rejects_bad_inputs():
  encoder = QwenAudioEncoder(num_mel_bins=8, d_model=16, num_layers=1, num_heads=2, ffn_dim=32,
                             max_source_positions=6)
  features = jnp.zeros((1, 8, 12))
  params = jax.jit(encoder.init)(jax.random.key(0), features)
  apply = jax.jit(encoder.apply, static_argnames="keep_positions")
  with pytest.raises(ValueError, match=r"\(B, 8, 12\).*got \(1, 8, 10\)"):
    apply(params, jnp.zeros((1, 8, 10)))
  with pytest.raises(ValueError, match="keep_positions must be even.*got 3"):
    apply(params, features, keep_positions=3)
  with pytest.raises(ValueError, match="max_source_positions=6, got 8"):
    apply(params, features, keep_positions=8)
  # An empty clip masks every key: finite output, no NaN.
  hidden, len2 = apply(params, features, jnp.array([0]))
  assert np.isfinite(np.asarray(hidden)).all() and int(len2[0]) == 0


# --- safetensors and the converter -----------------------------------------------------------

def _fake_tower(rng, d=16, layers=2, ffn=32, mels=8, positions=6):
  """An audio tower state dict (HF names) of random float32 arrays."""
  shapes = {"conv1.weight": (d, mels, 3), "conv1.bias": (d,), "conv2.weight": (d, d, 3),
            "conv2.bias": (d,), "embed_positions.weight": (positions, d),
            "layer_norm.weight": (d,), "layer_norm.bias": (d,)}
  for i in range(layers):
    b = f"layers.{i}."
    for name in ("q_proj", "v_proj", "out_proj"):
      shapes.update({f"{b}self_attn.{name}.weight": (d, d), f"{b}self_attn.{name}.bias": (d,)})
    shapes[f"{b}self_attn.k_proj.weight"] = (d, d)
    for name in ("self_attn_layer_norm", "final_layer_norm"):
      shapes.update({f"{b}{name}.weight": (d,), f"{b}{name}.bias": (d,)})
    shapes.update({f"{b}fc1.weight": (ffn, d), f"{b}fc1.bias": (ffn,),
                   f"{b}fc2.weight": (d, ffn), f"{b}fc2.bias": (d,)})
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


_SMALL = dict(num_mel_bins=8, d_model=16, num_layers=2, num_heads=2, ffn_dim=32,
              max_source_positions=6)


def _write_safetensors(path, tensors):
  """Our own writer of the format: {name: (dtype string, shape, raw bytes)}."""
  header, blobs, offset = {}, [], 0
  for name, (dtype, shape, raw) in tensors.items():
    header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset,
                                                                           offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  header["__metadata__"] = {"format": "pt"}
  text = json.dumps(header).encode()
  text += b" " * (-len(text) % 8)
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def test_read_safetensors_dtypes_prefixes_and_shards(tmp_path):
  save_file = pytest.importorskip("safetensors.numpy").save_file
  rng = np.random.default_rng(3)
  a = rng.standard_normal((3, 4)).astype(np.float32)
  h = rng.standard_normal((5,)).astype(np.float16)
  save_file({"audio_tower.a": a, "model.other.h": h}, str(tmp_path / "plain.safetensors"))
  read = convert.read_safetensors(str(tmp_path / "plain.safetensors"))
  assert set(read) == {"audio_tower.a", "model.other.h"}
  np.testing.assert_array_equal(read["audio_tower.a"], a)
  np.testing.assert_array_equal(read["model.other.h"], h.astype(np.float32))
  assert read["model.other.h"].dtype == np.float32
  only = convert.read_safetensors(str(tmp_path / "plain.safetensors"), prefixes="audio_tower.")
  assert list(only) == ["audio_tower.a"]

  # BF16 by hand: float32 values whose low 16 bits are zero survive exactly; an I32 tensor is
  # an error naming it and the file, unless a prefix leaves it out.
  bits = (rng.standard_normal((2, 3)).astype(np.float32).view(np.uint32) >> 16).astype("<u2")
  b = (bits.astype(np.uint32) << 16).view(np.float32)
  shard1 = tmp_path / "sharded" / "model-00001-of-00002.safetensors"
  shard1.parent.mkdir()
  _write_safetensors(shard1, {"model.audio_tower.b": ("BF16", (2, 3), bits.tobytes()),
                              "model.audio_tower.c": ("F32", (), np.float32(7).tobytes()),
                              "model.lm.ids": ("I32", (2,), np.arange(2, dtype="<i4").tobytes())})
  with pytest.raises(ValueError, match=r"model-00001-of-00002.*'model\.lm\.ids'.*I32"):
    convert.read_safetensors(str(shard1))
  read = convert.read_safetensors(str(shard1), prefixes=convert.QWEN_AUDIO_PREFIXES)
  np.testing.assert_array_equal(read["model.audio_tower.b"], b)
  assert read["model.audio_tower.c"].shape == () and read["model.audio_tower.c"] == 7

  # A sharded folder whose language-model shard is not even a safetensors file: never opened.
  (tmp_path / "sharded" / "model-00002-of-00002.safetensors").write_bytes(b"\xff" * 64)
  index = {"metadata": {}, "weight_map": {
      "model.audio_tower.b": "model-00001-of-00002.safetensors",
      "model.audio_tower.c": "model-00001-of-00002.safetensors",
      "model.lm.ids": "model-00001-of-00002.safetensors",
      "model.lm.embed": "model-00002-of-00002.safetensors"}}
  (tmp_path / "sharded" / convert.SAFETENSORS_INDEX).write_text(json.dumps(index))
  for path in (tmp_path / "sharded", tmp_path / "sharded" / convert.SAFETENSORS_INDEX):
    tower = convert.qwen_audio_state_dict(str(path))
    assert set(tower) == {"b", "c"}
    np.testing.assert_array_equal(tower["b"], b)
  with pytest.raises(ValueError, match="model-00002-of-00002.*not a safetensors file"):
    convert.read_safetensors(str(tmp_path / "sharded"), prefixes="model.lm.embed")
  with pytest.raises(FileNotFoundError, match="neither"):
    convert.read_safetensors(str(tmp_path))


def test_converter_errors_name_the_problem(tmp_path):
  save_file = pytest.importorskip("safetensors.numpy").save_file
  rng = np.random.default_rng(4)
  tower = _fake_tower(rng)
  encoder = QwenAudioEncoder(**_SMALL)
  params = convert.qwen_audio_params(tower, encoder)
  np.testing.assert_array_equal(params["conv1"]["kernel"], tower["conv1.weight"].transpose(2, 1, 0))
  np.testing.assert_array_equal(params["layers_1"]["fc1"]["kernel"], tower["layers.1.fc1.weight"].T)
  assert "bias" not in params["layers_0"]["self_attn"]["k_proj"]
  hidden, _ = jax.jit(encoder.apply)({"params": params}, jnp.zeros((1, 8, 12)))   # tree fits
  assert hidden.shape == (1, 3, 16)

  no_tower = str(tmp_path / "lm.safetensors")
  save_file({"model.embed_tokens.weight": np.zeros((2, 2), np.float32)}, no_tower)
  with pytest.raises(ValueError, match=r"lm\.safetensors holds no Qwen2-Audio audio tower.*"
                                       r"'audio_tower\.'.*model\.embed_tokens\.weight"):
    convert.qwen_audio_state_dict(no_tower)
  missing = {k: v for k, v in tower.items() if k != "layers.1.fc2.bias"}
  with pytest.raises(ValueError, match=r"missing \['layers\.1\.fc2\.bias'\]"):
    convert.qwen_audio_params(missing, encoder)
  extra = dict(tower, **{"layers.0.self_attn.k_proj.bias": np.zeros(16, np.float32)})
  with pytest.raises(ValueError, match=r"unused \['layers\.0\.self_attn\.k_proj\.bias'\]"):
    convert.qwen_audio_params(extra, encoder)
  with pytest.raises(ValueError, match="d_model: checkpoint 16, encoder 32"):
    convert.qwen_audio_params(tower, QwenAudioEncoder(**dict(_SMALL, d_model=32)))
  with pytest.raises(ValueError, match="num_layers: checkpoint 2, encoder 3"):
    convert.qwen_audio_params(tower, QwenAudioEncoder(**dict(_SMALL, num_layers=3)))
  with pytest.raises(ValueError, match="max_source_positions: checkpoint 6, encoder 8"):
    convert.qwen_audio_params(tower, QwenAudioEncoder(**dict(_SMALL, max_source_positions=8)))
  bad = dict(tower, **{"layers.1.fc2.weight": np.zeros((16, 31), np.float32)})
  with pytest.raises(ValueError, match=r"wrong shape: layers\.1\.fc2\.weight"):
    convert.qwen_audio_params(bad, encoder)


def test_fingerprint_follows_the_audio_weights_only(tmp_path):
  save_file = pytest.importorskip("safetensors.numpy").save_file
  tower = _fake_tower(np.random.default_rng(5))
  lm = {"model.language_model.w": np.ones((3, 3), np.float32)}
  paths = {}
  for name, prefix, extra in (("a", "audio_tower.", {}), ("b", "model.audio_tower.", lm)):
    paths[name] = str(tmp_path / f"{name}.safetensors")
    save_file(dict({prefix + k: v for k, v in tower.items()}, **extra), paths[name])
  changed = dict(tower)
  changed["layers.1.fc1.bias"] = changed["layers.1.fc1.bias"].copy()
  changed["layers.1.fc1.bias"][3] += 1e-3
  paths["c"] = str(tmp_path / "c.safetensors")
  save_file({"audio_tower." + k: v for k, v in changed.items()}, paths["c"])
  prints = {k: convert.qwen_audio_fingerprint(p) for k, p in paths.items()}
  assert len(prints["a"]) == 16 and int(prints["a"], 16) >= 0
  assert prints["a"] == prints["b"] == convert.qwen_audio_fingerprint(paths["a"])
  assert prints["c"] != prints["a"]
  assert os.path.getsize(paths["b"]) > os.path.getsize(paths["a"])
