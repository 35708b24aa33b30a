"""Log-mel frontend: parity with librosa, the Kaldi mel banks, frame counts, augmentation."""
import dataclasses

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from jax_asc.audio import augment, frontends


def _signal(n=2, samples=32000, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(samples) / 32000
  tone = np.sin(2 * np.pi * 440 * t) * 0.3
  return (rng.standard_normal((n, samples)) * 0.05 + tone).astype(np.float32)


@pytest.mark.parametrize("scale,norm,window,pad_mode", [
    ("htk", None, "hann_periodic", "constant"),
    ("htk", "slaney", "hann_periodic", "reflect"),
    ("slaney", "slaney", "hann_periodic", "constant"),
    ("slaney", None, "hann_periodic", "reflect"),
])
def test_mel_spectrogram_matches_librosa(scale, norm, window, pad_mode):
  settings = frontends.MelSettings(mel_scale=scale, mel_norm=norm, window=window,
                                   pad_mode=pad_mode, fmin=20.0, fmax=15000.0)
  y = _signal()
  ours = np.asarray(frontends.mel_spectrogram(jnp.asarray(y), settings))
  ref = librosa.feature.melspectrogram(
      y=y.astype(np.float64), sr=32000, n_fft=4096, win_length=3072, hop_length=500,
      window="hann", center=True, pad_mode=pad_mode, power=2.0, n_mels=256, fmin=20.0,
      fmax=15000.0, htk=scale == "htk", norm=norm)
  assert ours.shape == ref.shape == (2, 256, 65)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * ref.max())
  # And the log-mel that the models see, where small bins matter as much as large ones.
  np.testing.assert_allclose(np.log(ours + 1e-5), np.log(ref + 1e-5), atol=1e-4)


def test_filterbank_matches_librosa_exactly_enough():
  for htk in (True, False):
    for norm in (None, "slaney"):
      settings = frontends.MelSettings(mel_scale="htk" if htk else "slaney", mel_norm=norm,
                                       n_fft=2048, win_length=2048, n_mels=128, fmin=50.0,
                                       fmax=14000.0)
      ref = librosa.filters.mel(sr=32000, n_fft=2048, n_mels=128, fmin=50.0, fmax=14000.0,
                                htk=htk, norm=norm)
      np.testing.assert_allclose(np.asarray(frontends.mel_filterbank(settings)).T, ref,
                                 rtol=1e-5, atol=1e-6 * ref.max())


def _kaldi_mel_banks_plain(n_mels, n_fft, sr, fmin, fmax):
  """torchaudio.compliance.kaldi.get_mel_banks (no VTLN), written out with loops."""
  def mel(f):
    return 1127.0 * np.log(1.0 + f / 700.0)
  lo, hi = mel(fmin), mel(fmax)
  delta = (hi - lo) / (n_mels + 1)
  out = np.zeros((n_fft // 2 + 1, n_mels))
  for m in range(n_mels):
    left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
    for k in range(n_fft // 2):
      x = mel(k * sr / n_fft)
      if left < x < right:
        out[k, m] = (x - left) / (centre - left) if x <= centre else (right - x) / (right - centre)
  return out


def test_kaldi_filterbank_matches_plain_implementation():
  settings = dataclasses.replace(frontends.DCASE23, n_fft=1024, win_length=800, n_mels=64)
  ours = np.asarray(frontends.mel_filterbank(settings))
  ref = _kaldi_mel_banks_plain(64, 1024, 32000, 0.0, 15500.0)
  assert ours.shape == (513, 64)
  np.testing.assert_allclose(ours, ref, atol=1e-6)
  assert np.all(ours[-1] == 0)   # the appended Nyquist column


def test_frame_counts_of_the_two_cpjku_frontends():
  y = jnp.asarray(_signal(1))
  assert frontends.log_mel(y, frontends.DCASE23).shape == (1, 256, 64)   # pre-emphasis: 64
  assert frontends.log_mel(y, frontends.DCASE25).shape == (1, 256, 65)
  assert frontends.DCASE23.num_frames(32000) == 64
  assert frontends.DCASE25.num_frames(32000) == 65


def test_dcase23_preemphasis_and_normalisation():
  """(log(mel(preemph(x)) + 1e-5) + 4.5) / 5, with a symmetric window and Kaldi banks."""
  settings = frontends.DCASE23
  y = _signal(1)
  emphasised = y[:, 1:] - 0.97 * y[:, :-1]
  plain = dataclasses.replace(settings, preemphasis=0.0, norm_shift=0.0, norm_scale=1.0)
  expected = (np.log(np.asarray(frontends.mel_spectrogram(jnp.asarray(emphasised), plain))
                     + 1e-5) + 4.5) / 5
  # The native kernel pre-emphasises with a fused multiply-add: float32 rounding apart.
  np.testing.assert_allclose(np.asarray(frontends.log_mel(jnp.asarray(y), settings)), expected,
                             atol=5e-5)
  window = frontends.window_array(dataclasses.replace(settings, n_fft=8, win_length=6))
  np.testing.assert_allclose(window[1:7], np.hanning(6), atol=1e-7)   # symmetric Hann


def test_settings_from_config_names_unknown_keys():
  with pytest.raises(ValueError, match="n_melz"):
    frontends.settings_from_config({"preset": "dcase25", "n_melz": 3})
  with pytest.raises(ValueError, match="mel_scale"):
    frontends.MelSettings(mel_scale="bark")


def test_fmax_jitter_range_and_determinism():
  key = jax.random.key(3)
  draws = np.array([float(augment.jitter_corner(k, 15500.0, 1000, -1))
                    for k in jax.random.split(key, 400)])
  assert draws.min() >= 15001 and draws.max() <= 16000 and len(set(draws)) > 100
  assert float(augment.jitter_corner(key, 15500.0, 1000, -1)) == float(
      augment.jitter_corner(key, 15500.0, 1000, -1))
  assert float(augment.jitter_corner(key, 15500.0, 1, -1)) == 15500.0


def test_jitter_inside_jit_matches_static_filterbank():
  settings = frontends.DCASE25
  traced = jax.jit(lambda f: frontends.mel_filterbank(settings, fmax=f))(12000.0)
  static = frontends.mel_filterbank(dataclasses.replace(settings, fmax=12000.0))
  # float32 corner points inside jit vs float64 on the host: ~3e-5 on weights of order 1.
  np.testing.assert_allclose(np.asarray(traced), np.asarray(static), atol=1e-4)


def test_masks_width_position_and_independence():
  x = jnp.ones((64, 40, 30))
  key = jax.random.key(0)
  masked = np.asarray(augment.frequency_mask(key, x, 10)) == 0
  rows = masked.all(axis=2)                     # a frequency mask covers whole rows
  assert np.array_equal(masked.any(axis=2), rows)
  widths = rows.sum(axis=1)
  assert widths.max() <= 9 and len(set(widths.tolist())) > 3   # width floor(U·W) ∈ [0, W−1]
  for row in rows:                               # one contiguous band
    idx = np.flatnonzero(row)
    assert len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
  shared = np.asarray(augment.time_mask(key, x, 10, iid=False)) == 0
  assert all(np.array_equal(shared[0], s) for s in shared)
  again = np.asarray(augment.frequency_mask(key, x, 10)) == 0
  assert np.array_equal(masked, again)
  assert np.array_equal(np.asarray(augment.time_mask(key, x, 0)), np.asarray(x))


def test_training_frontend_masks_in_the_configured_domain():
  y = jnp.asarray(_signal(4))
  aug = frontends.FrontendAugment(freq_mask=40)
  key = jax.random.key(1)
  power = frontends.log_mel(y, frontends.DCASE25, key=key, aug=aug)
  # d24/25 mask the power mel: masked bins become log(0 + 1e-5).
  assert np.isclose(np.asarray(power).min(), np.log(1e-5), atol=1e-4)
  log = frontends.log_mel(y, frontends.DCASE23, key=key, aug=aug)
  # d23 masks the log-mel with 0, then normalises: (0 + 4.5) / 5.
  assert np.any(np.isclose(np.asarray(log), 0.9, atol=1e-6))


def test_m2d_frontend_matches_librosa_at_m2ds_settings():
  """M2D's nnAudio frontend written with librosa (periodic Hann, centred reflect padding, Slaney
  mels with area normalisation, 50–16000 Hz), log(mel + float32 eps), then the checkpoint's
  normalisation: a 10-s clip is 80 × 1001."""
  y = np.random.default_rng(3).standard_normal(320000).astype(np.float32) * 0.1
  y[:32000] *= 0.001   # a quiet second, where the log's eps matters
  settings = frontends.m2d(mean=-7.1, std=4.2)
  ours = np.asarray(frontends.log_mel(jnp.asarray(y[None]), settings))[0]
  mel = librosa.feature.melspectrogram(
      y=y.astype(np.float64), sr=32000, n_fft=800, win_length=800, hop_length=320,
      window="hann", center=True, pad_mode="reflect", power=2.0, n_mels=80, fmin=50.0,
      fmax=16000.0, htk=False, norm="slaney")
  ref = (np.log(mel + np.finfo(np.float32).eps) + 7.1) / 4.2
  assert ours.shape == ref.shape == (80, 1001)
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  assert frontends.settings_from_config({"preset": "m2d"}) == frontends.M2D
  with pytest.raises(ValueError, match="std must be > 0"):
    frontends.m2d(std=0.0)
