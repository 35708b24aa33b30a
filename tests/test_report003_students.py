"""Report 003's students: the CP-Mobile sizes of figure 2, the norm_cosine head and its norm
ablations (table 2), the 16 kHz frontend and the two-way fmax shift."""
import dataclasses

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from configs import common
from jax_asc import models, native
from jax_asc.audio import frontends
from jax_asc.eval import complexity

# 1 s at 16 kHz through dcase25_16k: 256 mels × 65 frames.
INPUT = (1, 256, 65)


@pytest.mark.parametrize("size,params,macs,peak_lr", [
    ("6k", 6_130, 1_547_844, 0.04),
    ("14k", 14_002, 2_903_572, 0.04),
    ("27k", 27_400, 6_350_968, 0.03),
    ("61k", 60_702, 16_292_172, 0.02),
    ("126k", 127_268, 31_444_256, 0.01),
])
def test_figure2_sizes_parameter_and_mac_counts(size, params, macs, peak_lr):
  cfg = common.cp_mobile_report003(size)
  assert (cfg.norm, cfg.head, cfg.head_norm, cfg.use_grn) == ("layer", "norm_cosine", "layer",
                                                              True)
  cost = complexity.count(models.build(cfg), INPUT)
  assert (cost.params, cost.macs) == (params, macs)
  assert common.CP_MOBILE_REPORT003[size][3] == peak_lr


def test_the_126k_student_is_the_d23_cp_mobile_with_the_new_head():
  """Same widths as common.cp_mobile("dcase23"); the head differs: − 1×1 conv (168·10) and its
  BatchNorm (2·10), + LayerNorm1D (2·168) and the cosine classifier (168·10)."""
  d23 = complexity.count(models.build(common.cp_mobile("dcase23")), INPUT)
  ours = complexity.count(models.build(common.cp_mobile_report003("126k")), INPUT)
  assert ours.params == d23.params - (168 * 10 + 2 * 10) + (2 * 168 + 168 * 10)
  assert models.build(common.cp_mobile_report003("126k")).stage_channels() == [32, 32, 72, 168]
  with pytest.raises(ValueError, match="size must be one of"):
    common.cp_mobile_report003("64k")


@pytest.mark.parametrize("norm,params,has_batch_stats", [
    ("layer", 127_268, False),
    ("batch", 127_268, True),    # "+ BatchNorm": 2C per norm as LayerNorm
    ("none", 122_772, False),    # "- LayerNorm": every norm's 2C gone (4,496)
])
def test_table2_norm_ablations(norm, params, has_batch_stats):
  cfg = common.cp_mobile_report003("126k", norm=norm)
  assert cfg.head_norm == norm
  model = models.build(cfg)
  assert complexity.count(model, INPUT).params == params
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(INPUT))
  assert ("batch_stats" in variables) == has_batch_stats
  head = variables["params"].get("embedding_norm")
  if norm == "none":
    assert head is None and "norm" not in variables["params"]["stem_0"]
  else:
    assert jax.tree.map(lambda p: p.shape, head) == {"scale": (168,), "bias": (168,)}
  if norm == "batch":
    assert variables["batch_stats"]["embedding_norm"]["mean"].shape == (168,)


def _small(norm="layer", head="norm_cosine", **overrides):
  cfg = common.cp_mobile_report003("6k", norm=norm, cosine_scale=16.0)
  cfg.update(head=head, **overrides)
  return models.build(cfg)


def test_norm_cosine_head_embeddings_and_logits():
  model = _small()
  x = jax.random.normal(jax.random.key(1), (3, 64, 33))
  variables = model.init(jax.random.key(0), x)
  feats = model.apply(variables, x, return_features=True)
  pooled = np.asarray(feats["s3"]).mean(axis=(1, 2))
  np.testing.assert_allclose(feats["embedding_prenorm"], pooled, rtol=1e-5, atol=1e-6)
  # At initialisation (scale 1, bias 0) the LayerNorm1D standardises each embedding.
  expected = (pooled - pooled.mean(-1, keepdims=True)) / np.sqrt(pooled.var(-1, keepdims=True)
                                                                 + 1e-5)
  np.testing.assert_allclose(feats["embedding"], expected, rtol=1e-4, atol=1e-4)
  kernel = np.asarray(variables["params"]["head_cosine"]["kernel"])
  emb = np.asarray(feats["embedding"])
  cosine = (emb / np.linalg.norm(emb, axis=-1, keepdims=True)) @ (
      kernel / np.linalg.norm(kernel, axis=0, keepdims=True))
  np.testing.assert_allclose(feats["logits"], 16.0 * cosine, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(model.apply(variables, x), feats["logits"], atol=1e-6)


@pytest.mark.parametrize("head", ["conv", "cosine"])
def test_other_heads_report_the_pooled_embedding_twice(head):
  model = _small(norm="batch", head=head)
  x = jax.random.normal(jax.random.key(1), (2, 64, 33))
  variables = model.init(jax.random.key(0), x)
  assert "embedding_norm" not in variables["params"]
  feats = model.apply(variables, x, return_features=True)
  np.testing.assert_array_equal(feats["embedding"], feats["embedding_prenorm"])


def test_existing_configs_keep_their_parameter_trees():
  """head_norm defaults to norm: the conv head's BatchNorm is still `head_norm`, and the
  dcase25 / dcase23 configs carry no new field."""
  for variant in ("dcase25", "dcase23"):
    cfg = common.cp_mobile(variant)
    assert "head_norm" not in cfg
    variables = jax.eval_shape(models.build(cfg).init, jax.random.key(0), jnp.zeros(INPUT))
    assert sorted(variables["params"]) == ["b1", "b2", "b3", "b4", "b5", "b6", "head_conv",
                                           "head_norm", "stem_0", "stem_1"]
    assert variables["params"]["head_norm"]["scale"].shape == (10,)


def test_unknown_norms_are_rejected():
  x = jnp.zeros((1, 64, 33))
  for kwargs, match in (({"norm": "group"}, "norm must be one of"),
                        ({"head_norm": "group"}, "head_norm must be one of"),
                        ({"head": "linear"}, "head must be one of")):
    with pytest.raises(ValueError, match=match):
      _small(**kwargs).init(jax.random.key(0), x)


@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_every_ablation_trains(norm):
  """A training step's forward and gradient (the deferred-norm paths for batch) are finite, and
  the batch ablation's head BatchNorm1D updates its running statistics."""
  model = _small(norm=norm)
  x = jax.random.normal(jax.random.key(1), (4, 64, 33))
  variables = model.init(jax.random.key(0), x)
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}

  def loss(p):
    out, updates = model.apply({"params": p, **rest}, x, train=True, return_features=True,
                               mutable=["batch_stats"])
    return jnp.mean(out["logits"] ** 2) + jnp.mean(out["embedding"] ** 2), updates

  (value, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.any(np.asarray(grads["head_cosine"]["kernel"]) != 0)
  if norm == "batch":
    assert not np.allclose(updates["batch_stats"]["embedding_norm"]["mean"], 0.0)


# ----------------------------------------------------------------------------- 16 kHz frontend
def test_dcase25_16k_preset_halves_the_dcase25_frontend():
  s, ref = frontends.PRESETS["dcase25_16k"], frontends.DCASE25
  assert (s.sample_rate, s.n_fft, s.win_length, s.hop_length) == (16000, 2048, 1536, 250)
  assert s.win_length / s.sample_rate == ref.win_length / ref.sample_rate == 0.096
  assert s.hop_length / s.sample_rate == ref.hop_length / ref.sample_rate
  assert dataclasses.replace(s, sample_rate=32000, n_fft=4096, win_length=3072,
                             hop_length=500) == ref
  assert s.num_frames(16000) == 65
  assert frontends.settings_from_config(common.frontend("dcase25_16k")) == s
  y = np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32) * 0.1
  ours = np.asarray(frontends.mel_spectrogram(jnp.asarray(y), s))
  mel = librosa.feature.melspectrogram(
      y=y.astype(np.float64), sr=16000, n_fft=2048, win_length=1536, hop_length=250,
      window="hann", center=True, pad_mode="reflect", power=2.0, n_mels=256, fmin=0.0,
      fmax=8000.0, htk=True, norm=None)
  assert ours.shape == mel.shape == (1, 256, 65)
  np.testing.assert_allclose(np.log(ours + 1e-5), np.log(mel + 1e-5), atol=1e-4)


# ----------------------------------------------------------------------------- fmax shift
SHIFT = frontends.FrontendAugment(fmax_aug_range=2000, fmax_beyond_nyquist=True)


def test_filterbank_above_nyquist_is_well_formed():
  """fmax 9000 Hz at 16 kHz: the mel spacing runs to 9000 Hz, the bank is cut at Nyquist; bands
  keep their triangles (peak ≤ 1) below it, the ones starting above it are all zero."""
  for s in (frontends.DCASE25_16K, dataclasses.replace(frontends.DCASE23, fmax=None)):
    fmax = s.nyquist + 1000.0
    static = frontends.static_mel_filterbank(dataclasses.replace(s, fmax=fmax))   # (F, M)
    traced = np.asarray(jax.jit(lambda f: frontends.mel_filterbank(s, fmax=f))(fmax))
    np.testing.assert_allclose(traced, static, atol=1e-4)
    assert np.all(np.isfinite(static)) and static.min() >= 0 and static.max() <= 1 + 1e-9
    scale = s.mel_scale
    corners = frontends.mel_to_hz(np.linspace(frontends.hz_to_mel(s.fmin, scale),
                                              frontends.hz_to_mel(fmax, scale), s.n_mels + 2),
                                  scale)
    above = corners[:-2] >= s.nyquist
    assert 0 < above.sum() < 20
    assert np.all(static[:, above] == 0)
    assert np.all(static[:, ~above].max(axis=0) > 0)
    # The bands below fmax = Nyquist − 1000 Hz are all nonzero too.
    below = frontends.static_mel_filterbank(dataclasses.replace(s, fmax=s.nyquist - 1000.0))
    assert np.all(below.max(axis=0) > 0)


def test_band_supports_cover_fmax_on_both_sides_of_nyquist():
  s = frontends.DCASE25_16K
  lo, hi = frontends.band_supports(s, 10, 2000, fmax_beyond_nyquist=True)
  assert np.all(lo <= hi)
  for fmin in (0.0, 9.0):
    for fmax in (7001.0, 7800.0, 8000.0, 8300.0, 9000.0):
      bank = np.asarray(frontends.mel_filterbank(s, fmin=fmin, fmax=fmax))
      rows = np.arange(bank.shape[0])[:, None]
      outside = (rows < lo[None, :]) | (rows >= hi[None, :])
      assert not np.any(bank[outside] > 0), (fmin, fmax)
  # Without the setting the supports stay those of fmax clipped at Nyquist (the kernel's sums,
  # and so its output, unchanged).
  old_lo, old_hi = frontends.band_supports(s, 10, 2000)
  assert np.all(old_lo < old_hi) and not np.array_equal(old_hi, hi)
  # fmax 8501–9500 Hz: the bands that start above Nyquist for every draw get empty supports.
  high = dataclasses.replace(s, fmax=9000.0)
  lo, hi = frontends.band_supports(high, 0, 1000, fmax_beyond_nyquist=True)
  assert 0 < np.sum(lo == hi) < 20 and np.all(hi[lo == hi] == s.n_freqs)
  for fmax in (8501.0, 9000.0, 9500.0):
    bank = np.asarray(frontends.mel_filterbank(high, fmax=fmax))
    rows = np.arange(bank.shape[0])[:, None]
    assert not np.any(bank[(rows < lo[None, :]) | (rows >= hi[None, :])] > 0), fmax


def test_fmax_shift_goes_both_ways_only_when_asked():
  """fmax = 8000 + 1000 − randint(2000): without the setting every draw above Nyquist is clipped
  (the features equal those of fmax = Nyquist), with it some draws raise fmax (the top bands
  empty) and the others lower it (the same features as the clipped frontend)."""
  y = jnp.asarray(np.random.default_rng(1).standard_normal((2, 16000)).astype(np.float32) * 0.1)
  s = frontends.DCASE25_16K
  clip = dataclasses.replace(SHIFT, fmax_beyond_nyquist=False)
  shifted = jax.jit(lambda k: frontends.log_mel(y, s, key=k, aug=SHIFT))
  clipped = jax.jit(lambda k: frontends.log_mel(y, s, key=k, aug=clip))
  at_nyquist = np.asarray(frontends.log_mel(y, s))
  floor = np.log(s.log_eps)
  raised = lowered = 0
  for seed in range(16):
    key = jax.random.key(seed)
    a, b = np.asarray(shifted(key)), np.asarray(clipped(key))
    top_empty = np.allclose(a[:, -1], floor, atol=1e-6)
    if top_empty:
      raised += 1
      assert not np.allclose(b[:, -1], floor, atol=1e-6)
      np.testing.assert_allclose(b, at_nyquist, atol=2e-4)   # clipped to Nyquist
    elif not np.allclose(b, at_nyquist, atol=2e-4):
      lowered += 1
      np.testing.assert_allclose(a, b, atol=2e-4)             # the same fmax below Nyquist
  assert raised >= 2 and lowered >= 2, (raised, lowered)


@pytest.mark.skipif(not native.available(), reason="native CPU kernels not built")
def test_native_mel_matches_xla_with_fmax_beyond_nyquist():
  y = jnp.asarray(np.random.default_rng(2).standard_normal((3, 16000)).astype(np.float32) * 0.1)
  s = frontends.DCASE25_16K
  aug = dataclasses.replace(SHIFT, fmin_aug_range=10)
  run = lambda k: frontends.log_mel(y, s, key=k, aug=aug)
  for seed in range(4):
    ours = np.asarray(jax.jit(run)(jax.random.key(seed)))
    with native.disabled():
      ref = np.asarray(jax.jit(run)(jax.random.key(seed)))
    np.testing.assert_allclose(ours, ref, atol=2e-4)
