"""Report 004 §2.3: the semantic teacher's cache (a frozen Qwen-architecture encoder on the clean
sum of the dry sources, pooled to bins, per mixture id with fingerprints), the eq. 4 terms, the
tagger's semantic output and the inference checkpoint without its projector."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import report004_s5
from jax_asc import teachers as teachers_lib
from jax_asc.audio import whisper
from jax_asc.data import audio_io, s5_synthetic
from jax_asc.losses import registry, similarity
from jax_asc.models import m2d
from jax_asc.stages import inference_checkpoint
from jax_asc.teachers import semantic
from jax_asc.teachers.cache import CacheMismatchError

TINY = dict(num_mel_bins=128, d_model=32, num_layers=2, num_heads=4, ffn_dim=64,
            max_source_positions=50)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
  cfg = report004_s5.s5_data()
  cfg.update(num_train=20, num_validation=4, num_test=4, duration_s=1.0, clips_per_class=3,
             rooms=2, on_the_fly_train=False)
  return s5_synthetic.load(cfg, str(tmp_path_factory.mktemp("s5")))["train"]


def _spec(**overrides):
  settings = dict(source="qwen_audio", encoder=dict(TINY), bins=8, batch_size=6)
  config = ml_collections.ConfigDict({"teachers": {"qwen": dict(settings, **overrides)}})
  return teachers_lib.specs(config)["qwen"]


def _pool(x, bins):
  """adaptive_avg_pool1d written out: bin i averages [floor(i·T/bins), ceil((i+1)·T/bins))."""
  t = x.shape[1]
  return np.stack([x[:, (i * t) // bins:-(-((i + 1) * t) // bins)].mean(1)
                   for i in range(bins)], axis=1)


def test_cache_holds_the_teacher_on_the_clean_sources(split, tmp_path):
  teacher = semantic.load("qwen", _spec())
  meta = semantic.build(teacher, split, str(tmp_path), batch_size=6, log=lambda _: None)
  assert meta["count"] == len(split) and meta["outputs"]["tokens"]["shape"] == [8, 32]
  assert meta["build"]["mixtures_per_s"] > 0 and meta["build"]["disk_bytes"] > 0
  tokens = semantic.cached_tokens("qwen", _spec(folder=str(tmp_path)), split, None)
  assert tokens.dtype == np.float16 and tokens.shape == (len(split), 8, 32)
  # Independently: the summed dry sources, resampled in NumPy, the whole window through the
  # encoder (no keep_positions), the valid frames pooled by hand.
  rows = np.arange(5)
  mono = split.audio("sources", rows).sum(axis=1)
  x = np.stack([audio_io.sinc_resample(m, 32000, 16000) for m in mono]).astype(np.float32)
  features, valid = whisper.log_mel(jnp.asarray(x), teacher.whisper)
  hidden, len2 = teacher.encoder.apply({"params": teacher.params}, features, valid)
  assert int(len2[0]) == 25                      # 1 s: 100 frames → 50 positions → 25 outputs
  expected = _pool(np.asarray(hidden)[:, :25], 8)
  np.testing.assert_allclose(tokens[rows].astype(np.float32), expected, atol=2e-3, rtol=2e-3)
  # The teacher hears the sources, not the reverberant mixture.
  mixture = split.audio("waveform", rows)[:, :1]
  heard = semantic.token_function(teacher, 32000, split.num_samples)(teacher.params, mixture)
  assert np.abs(np.asarray(heard) - expected).max() > 0.05


def test_build_resumes_after_a_crash(split, tmp_path, monkeypatch):
  teacher = semantic.load("qwen", _spec())
  reference = str(tmp_path / "reference")
  semantic.build(teacher, split, reference, batch_size=6, log=lambda _: None)
  monkeypatch.setattr(semantic, "CHUNK_ROWS", 8)
  real = semantic.token_function
  calls = {"n": 0}

  def crashing(*args):
    run = real(*args)

    def wrapped(params, sources):
      calls["n"] += 1
      if calls["n"] > 2:       # the first chunk (8 rows: two batches of 6, 2) is written
        raise KeyboardInterrupt("killed")
      return run(params, sources)
    return wrapped
  monkeypatch.setattr(semantic, "token_function", crashing)
  folder = str(tmp_path / "crashed")
  with pytest.raises(KeyboardInterrupt):
    semantic.build(teacher, split, folder, batch_size=6, log=lambda _: None)
  assert not os.path.exists(os.path.join(folder, "train"))          # never half visible
  with open(os.path.join(folder, "train.partial", "progress.json")) as f:
    assert json.load(f)["done"] == 8
  monkeypatch.setattr(semantic, "token_function", real)
  lines = []
  meta = semantic.build(teacher, split, folder, batch_size=6, log=lines.append)
  assert "resuming at mixture 8" in lines[0] and meta["build"]["mixtures_computed"] == 12
  np.testing.assert_array_equal(np.load(os.path.join(folder, "train", "tokens.npy")),
                                np.load(os.path.join(reference, "train", "tokens.npy")))
  # Built again: up to date, nothing computed.
  again = []
  semantic.build(teacher, split, folder, batch_size=6, log=again.append)
  assert "up to date" in again[0]


def test_the_cache_refuses_what_it_was_not_made_for(split, tmp_path):
  folder = str(tmp_path)
  semantic.build(semantic.load("qwen", _spec()), split.take(np.arange(12)), folder,
                 batch_size=6, log=lambda _: None)
  part = split.take(np.arange(12))
  assert semantic.cached_tokens("qwen", _spec(folder=folder), part, None).shape[0] == 12
  # Other weights: the weights' fingerprint differs.
  with pytest.raises(CacheMismatchError, match="teacher weights"):
    semantic.cached_tokens("qwen", _spec(folder=folder, init_seed=1), part, None)
  with pytest.raises(CacheMismatchError, match="teacher bins"):
    semantic.cached_tokens("qwen", _spec(folder=folder, bins=4), part, None)
  # Mixture ids the cache lacks are named.
  with pytest.raises(CacheMismatchError, match="train_000000012"):
    semantic.cached_tokens("qwen", _spec(folder=folder), split, None)
  # A mixture whose metadata changed (other gains, files or room) is named.
  metadata = np.asarray(part["metadata"]).copy()
  metadata[3] = metadata[3].replace('"snr_db": ', '"snr_db": 1')
  assert metadata[3] != part["metadata"][3]
  changed = part.with_columns({"metadata": metadata})
  with pytest.raises(CacheMismatchError, match="train_000000003"):
    semantic.cached_tokens("qwen", _spec(folder=folder), changed, None)
  # Rows in another order are read in the split's order.
  order = np.array([5, 2, 11, 0])
  np.testing.assert_array_equal(
      semantic.cached_tokens("qwen", _spec(folder=folder), part.take(order), None),
      np.load(os.path.join(folder, "train", "tokens.npy"))[order])
  # Building over another teacher's cache is refused; a missing cache names the stage.
  with pytest.raises(CacheMismatchError, match="Delete it"):
    semantic.build(semantic.load("qwen", _spec(init_seed=1)), part, folder, batch_size=6,
                   log=lambda _: None)
  with pytest.raises(FileNotFoundError, match="teacher_cache"):
    semantic.cached_tokens("qwen", _spec(folder=str(tmp_path / "none")), part, None)
  with pytest.raises(ValueError, match="no setting"):
    semantic.load("qwen", _spec(encoder=dict(TINY, layers=3)))


def test_too_long_mixtures_are_refused(split):
  teacher = semantic.load("qwen", _spec())
  with pytest.raises(ValueError, match="longer than its 1.00-s window"):
    semantic.token_function(teacher, 32000, 48000)


def test_semantic_terms_follow_eq4_and_ramp():
  s = jax.random.normal(jax.random.key(0), (4, 8, 16))
  t = jax.random.normal(jax.random.key(1), (4, 8, 16)) + 0.5 * s
  settings = registry.default_settings()
  settings["semantic_cka"]["warmup_steps"] = settings["semantic_cos"]["warmup_steps"] = 10
  cka, cos = similarity.semantic_similarities(s, t)
  flat_s, flat_t = np.asarray(s).reshape(-1, 16), np.asarray(t).reshape(-1, 16)
  flat_s, flat_t = flat_s - flat_s.mean(0), flat_t - flat_t.mean(0)
  expected = (np.linalg.norm(flat_t.T @ flat_s) ** 2 / np.linalg.norm(flat_s.T @ flat_s)
              / np.linalg.norm(flat_t.T @ flat_t))
  assert float(cka) == pytest.approx(expected, rel=1e-5)
  for step, factor in ((0, 0.0), (5, 0.5), (20, 1.0)):
    inputs = {"semantic": s, "teachers": {"qwen": {"tokens": t}}, "step": jnp.int32(step)}
    loss, metrics, _ = registry.total({"semantic_cka": 0.05, "semantic_cos": 0.02}, settings,
                                      inputs)
    assert float(metrics["semantic_cka"]) == pytest.approx(factor * (1 - float(cka)), abs=1e-6)
    assert float(metrics["semantic_cos"]) == pytest.approx(factor * (1 - float(cos)), abs=1e-6)
    assert float(loss) == pytest.approx(
        factor * (0.05 * (1 - float(cka)) + 0.02 * (1 - float(cos))), abs=1e-6)
  with pytest.raises(ValueError, match="equal"):
    similarity.semantic_similarities(s, t[:, :4])


def test_semantic_output_reads_the_reference_channel_before_masking():
  model = m2d.M2DTagger(channels=4, embed_dim=32, depth=1, num_heads=4, input_size=(80, 101),
                        num_classes=5, track_input_dim=32, track_hidden_dim=16, aux_blocks=(),
                        spatial_mask_rate=0.5, semantic_dim=24, semantic_bins=8)
  x = jax.random.normal(jax.random.key(0), (2, 4, 80, 101))
  variables = model.init(jax.random.key(1), x)
  out = model.apply(variables, x, return_features=True)
  # One token per time column: its 5 frequency patches (of width 32) side by side.
  assert variables["params"]["semantic_projector"]["kernel"].shape == (5 * 32, 24)
  assert out["semantic"].shape == (2, 8, 24)
  # Other channels, or the spatial mask of training, leave it unchanged.
  other = x.at[:, 1:].set(0.0)
  np.testing.assert_allclose(model.apply(variables, other, return_features=True)["semantic"],
                             out["semantic"], atol=1e-6)
  masked, _ = model.apply(variables, x, train=True, return_features=True,
                          rngs={"spatial_mask": jax.random.key(2)}, mutable=["batch_stats"])
  np.testing.assert_allclose(masked["semantic"], out["semantic"], atol=1e-6)
  assert "semantic" not in m2d.M2DTagger(**{**_fields(model), "semantic_dim": 0}).apply(
      {"params": {k: v for k, v in variables["params"].items() if k != "semantic_projector"},
       "batch_stats": variables["batch_stats"]}, x, return_features=True)


def test_time_major_orders_tokens_by_time_column():
  """Flat M2D tokens (each chunk f-major, chunks one after another) → one token per time
  column in time order, for two full chunks and a remainder."""
  encoder = m2d.M2DEncoder(embed_dim=2, depth=1, num_heads=1, patch_size=16,
                           input_size=(32, 64))               # grid 2 × 4 per chunk
  frames = 150                                               # 2 chunks + 22 frames: 2 columns
  assert encoder.num_tokens(frames) == (4 + 4 + 2) * 2
  tokens = []
  for first, columns in ((0, 4), (4, 4), (8, 2)):
    for f in range(2):
      tokens += [[first + t, f] for t in range(columns)]
  ordered = np.asarray(encoder.time_major(jnp.asarray([tokens], jnp.float32), frames))
  assert ordered.shape == (1, 10, 4)
  np.testing.assert_array_equal(ordered[0, :, 0], np.arange(10))     # f = 0's time column
  np.testing.assert_array_equal(ordered[0, :, 2], np.arange(10))     # f = 1's
  np.testing.assert_array_equal(ordered[0, :, 1::2], [[0, 1]] * 10)
  flat = m2d.M2DEncoder(embed_dim=2, depth=1, num_heads=1, patch_size=16, input_size=(32, 64),
                        flat_features=False)
  same = jnp.ones((1, 10, 4))
  assert flat.time_major(same, frames) is same


def _fields(model):
  return {f: getattr(model, f) for f in ("channels", "embed_dim", "depth", "num_heads",
                                         "input_size", "num_classes", "track_input_dim",
                                         "track_hidden_dim", "aux_blocks", "spatial_mask_rate",
                                         "semantic_bins")}


def test_strip_drops_only_the_projector():
  config = report004_s5.get_config("tagger_1c_qwen,smoke")
  params = {"encoder": {"w": np.zeros(3)}, "head": {"w": np.zeros(2)},
            "semantic_projector": {"kernel": np.zeros((4, 5)), "bias": np.zeros(5)}}
  kept, dropped = inference_checkpoint.strip(config, {"params": params, "batch_stats": {}})
  assert dropped == {"semantic_projector": 25} and set(kept["params"]) == {"encoder", "head"}
  assert inference_checkpoint.inference_config(config).model.semantic_dim == 0
  assert config.model.semantic_dim == 64


def test_configs_follow_the_report():
  one = report004_s5.get_config("tagger_1c_qwen,root=/data,m2d=/m.pth")
  four = report004_s5.get_config("tagger_4c_qwen,root=/data,m2d=/m.pth")
  for config, (cka, cos), batch in ((one, (0.05, 0.02), 16), (four, (0.02, 0.01), 4)):
    assert (config.loss.terms.semantic_cka, config.loss.terms.semantic_cos) == (cka, cos)
    assert config.batch_size == batch and config.optimizer.grad_clip_norm == 0.5
    assert config.model.semantic_dim == 1280 and config.model.semantic_bins == 32
    epoch = 25088 // batch
    assert config.loss.semantic_cka.warmup_steps == 5 * epoch == config.schedule.warmup_steps
    assert config.optimizer.learning_rate == 1e-4          # projector (and heads)
    assert dict(config.optimizer.param_groups)["encoder/.*"] == {"lr_mult": 0.1}   # 1e-5
    assert not config.teachers.qwen.encoder and config.teachers.qwen.bins == 32   # Qwen2-Audio
  assert (one.num_epochs, one.evaluate.checkpoint) == (33, "latest")
  assert (four.num_epochs, four.evaluate.checkpoint) == (40, "best")
  accumulated = report004_s5.get_config("tagger_1c_qwen,root=/data,m2d=/m.pth,accum=4")
  assert accumulated.batch_size == 4 and accumulated.optimizer.grad_accum_steps == 4
  assert accumulated.loss.semantic_cka.warmup_steps == 4 * one.loss.semantic_cka.warmup_steps
  assert accumulated.schedule.warmup_steps == one.schedule.warmup_steps
  with pytest.raises(ValueError, match="qwen="):
    report004_s5.get_config("qwen_cache,root=/data")
  with pytest.raises(ValueError, match="must divide"):
    report004_s5.get_config("tagger_4c_qwen,root=/data,m2d=/m.pth,accum=3")
