"""The data path beside the d24/25 PyTorch reference: our NumPy `sinc_hann` resampler against
torchaudio's, the DCASE25 frontend against torchaudio's MelSpectrogram, and the float16 cache's
effect on the log-mel, on the real clips of ../shared/data (skipped when absent or without
torch); the resampler's own properties and the cache fingerprint need neither.
`python benchmarks/data_parity.py` prints the full measurements."""
import math
import os
import sys
import types

import numpy as np
import pytest
import soundfile

from jax_asc import data as data_lib
from jax_asc.data import audio_io, formats, loading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import data_parity  # noqa: E402

RATES = [(44100, 32000), (48000, 32000), (8000, 32000), (8000, 16000), (32000, 44100),
         (16000, 8000)]

try:
  import torch  # noqa: F401
  import torchaudio  # noqa: F401
  HAVE_TORCH = True
except ImportError:   # pragma: no cover - the reference extra is not installed
  HAVE_TORCH = False
needs_real_audio = pytest.mark.skipif(
    not (HAVE_TORCH and os.path.isdir(os.path.join(SHARED_DATA, "micirp"))
         and os.path.isdir(os.path.join(SHARED_DATA, "fsdd"))),
    reason="needs torch + torchaudio and ../shared/data (micirp, fsdd)")


# ----------------------------------------------------------------------------- no torch needed
def _definition(x, source, target, width_zeros=6, rolloff=0.99):
  """The windowed-sinc interpolation written straight from its definition, in float64: output
  i = m·new + j is Σ_k x[k] · sinc(t) · cos²(π t / 2W) · base / orig, t = base · ((k − m·orig) /
  orig − j/new) clamped to ±W, on gcd-reduced rates, base = rolloff · min(orig, new); j/new
  rounded to float32 as torchaudio does (exact, it moves outputs by up to ~1e-5)."""
  g = math.gcd(source, target)
  orig, new = source // g, target // g
  base = min(orig, new) * rolloff
  out = np.zeros(math.ceil(len(x) * new / orig))
  k = np.arange(len(x))
  for i in range(len(out)):
    m, j = divmod(i, new)
    phase = float(np.float32(j) / np.float32(new))
    t = np.clip(base * ((k - m * orig) / orig - phase), -width_zeros, width_zeros)
    out[i] = np.sum(x * np.sinc(t) * np.cos(np.pi * t / (2 * width_zeros)) ** 2) * base / orig
  return out


@pytest.mark.parametrize("source,target", RATES)
def test_sinc_resampler_is_the_windowed_sinc_definition(source, target):
  x = np.random.default_rng(source + target).standard_normal(97).astype(np.float32)
  np.testing.assert_allclose(audio_io.resample(x, source, target, "sinc_hann"),
                             _definition(x.astype(np.float64), source, target), atol=2e-6)


@pytest.mark.parametrize("source,target", RATES)
def test_sinc_resampler_length_dc_gain_and_tones(source, target):
  for n in (1, 2, 440, 441, 1001, source):
    assert audio_io.resample(np.ones(n, np.float32), source, target).shape == (
        math.ceil(n * target / source),)
  interior = slice(64, -64)
  dc = audio_io.resample(np.ones(source, np.float32), source, target)[interior]
  assert np.abs(dc - 1).max() < 1e-3                            # the windowed sinc's DC ripple
  for freq in (440.0, 1000.0):
    tone = np.sin(2 * np.pi * freq * np.arange(source) / source + 0.3).astype(np.float32)
    out = audio_io.resample(tone, source, target)
    exact = np.sin(2 * np.pi * freq * np.arange(len(out)) / target + 0.3)
    error_db = 10 * np.log10(np.mean((out - exact)[interior] ** 2) / 0.5)
    assert error_db < -60, (freq, error_db)


def test_sinc_resampler_batches_identity_and_bad_method():
  x = np.random.default_rng(0).standard_normal((2, 3, 500)).astype(np.float32)
  batch = audio_io.resample(x, 44100, 32000)
  assert batch.shape == (2, 3, 363) and batch.dtype == np.float32
  np.testing.assert_array_equal(batch[1, 2], audio_io.resample(x[1, 2], 44100, 32000))
  same = audio_io.resample(x.astype(np.float64), 32000, 32000, "sinc_hann")
  assert same.dtype == np.float32 and np.array_equal(same, x)
  with pytest.raises(ValueError, match=r"sinc_hann.*soxr_hq.*'kaiser'"):
    audio_io.resample(x, 44100, 32000, "kaiser")


def test_cache_fingerprint_follows_resampler_and_dtype(tmp_path):
  root = tmp_path / "fsdd"
  root.mkdir()
  rng = np.random.default_rng(1)
  for name in ("3_george_0.wav", "7_theo_1.wav"):
    soundfile.write(str(root / name), 0.3 * rng.standard_normal(8000), 8000, subtype="PCM_16")
  manifest = formats.fsdd(str(root), "test")
  keys = {(r, d, c): loading._fingerprint(manifest, 32000, False, d, r, c)
          for r in audio_io.RESAMPLERS for d in loading.CACHE_DTYPES for c in (1, 2)}
  assert len(set(keys.values())) == len(keys)
  cache = str(tmp_path / "cache")
  raw, _ = audio_io.read_audio(str(root / "3_george_0.wav"))
  for method in audio_io.RESAMPLERS:
    split = loading.load(manifest, sample_rate=32000, cache_dir=cache, resampler=method)
    assert split["waveform"].dtype == np.float32                # the default cache
    expected = audio_io.fit_length(audio_io.resample(raw, 8000, 32000, method), 80000)
    np.testing.assert_array_equal(split["waveform"][0, 0], expected)
  assert len(os.listdir(os.path.join(cache, "fsdd"))) == 2
  with pytest.raises(ValueError, match=r"data\.resampler must be one of \('sinc_hann', "
                                       r"'soxr_hq'\), got 'librosa'"):
    loading.load(manifest, sample_rate=32000, cache_dir=cache, resampler="librosa")
  cfg = types.SimpleNamespace(name="fsdd", root=str(root), resampler="sox", cache_dir=cache)
  with pytest.raises(ValueError, match=r"data\.resampler.*'sox'"):
    data_lib.load_splits(cfg, ["test"])


def test_base_config_defaults_follow_the_dcase25_reference():
  from configs import common, cp_mobile_dcase23
  config = common.base_config()
  assert config.data.resampler == "sinc_hann" and config.data.cache_dtype == "float32"
  assert config.waveform_augment.dir_resampler == "soxr_hq"
  assert cp_mobile_dcase23.get_config().data.resampler == "soxr_hq"


# ----------------------------------------------------------------------------- real audio
@pytest.fixture(scope="module")
def real():
  """Real clips (MicIRP 44.1 and 48 kHz, the 1-s room IR, FSDD 8 kHz) resampled to 32 kHz by
  torchaudio (the reference) and by ours, with their DCASE25 log-mels; one batch shape."""
  sets = data_parity.real_clips(SHARED_DATA, fsdd=12)
  micirp = sets["micirp"]
  clips = ([c for c in micirp if c[2] == 44100][::8] + [c for c in micirp if c[2] == 48000]
           + sets.get("rir", []) + sets["fsdd"])
  out = dict(clips=clips, kind=["fsdd" if rate == 8000 else "ir" for _, _, rate in clips])
  out["torch"] = [data_parity.torch_resample(w, rate, 32000) for _, w, rate in clips]
  out["torch_functional"] = [data_parity.torch_resample(w, rate, 32000, "functional")
                             for _, w, rate in clips]
  for method in audio_io.RESAMPLERS:
    out[method] = [audio_io.resample(w, rate, 32000, method) for _, w, rate in clips]
  batch, out["valid"] = data_parity.to_one_second(out["torch"])
  out["mel_torch_frontend"] = data_parity.torch_log_mel(batch)
  out["mel"] = data_parity.our_log_mel(batch)
  out["mel_soxr"] = data_parity.our_log_mel(data_parity.to_one_second(out["soxr_hq"])[0])
  out["mel_fp16"] = data_parity.our_log_mel(batch.astype(np.float16).astype(np.float32))
  return out


@needs_real_audio
def test_sinc_hann_matches_torchaudio_on_real_clips(real):
  for (name, waveform, rate), ours, module, functional in zip(
      real["clips"], real["sinc_hann"], real["torch"], real["torch_functional"]):
    assert ours.shape == module.shape == (math.ceil(len(waveform) * 32000 / rate),), name
    np.testing.assert_allclose(ours, module, atol=1e-6, err_msg=name)      # Resample (d24/25)
    np.testing.assert_allclose(ours, functional, atol=1e-5, err_msg=name)  # float32 kernel
  for name, waveform, rate in real["clips"]:
    if rate == 8000:   # and upwards to 16 kHz
      np.testing.assert_allclose(audio_io.resample(waveform, 8000, 16000),
                                 data_parity.torch_resample(waveform, 8000, 16000), atol=1e-6)


@needs_real_audio
def test_frontend_matches_torchaudio_melspectrogram_on_real_audio(real):
  stats = data_parity.band_stats(real["mel"], real["mel_torch_frontend"], real["valid"])
  assert stats["max_loud"] < 1e-3     # bands with power ≥ 1e-3: float32 FFT rounding
  assert stats["max"] < 1e-2          # bands at the 1e-5 floor (FSDD above 4 kHz)
  assert stats["mean"] < 1e-4


@needs_real_audio
def test_soxr_differs_from_the_reference_in_the_high_bands(real):
  """Why `sinc_hann` is the default: soxr_hq keeps 12–16 kHz that torchaudio's Hann-windowed
  sinc (width 6, rolloff 0.99) attenuates, which the d24/25 models were trained on."""
  ir = np.array([k == "ir" for k in real["kind"]])
  stats = data_parity.band_stats(real["mel_soxr"][ir], real["mel"][ir], real["valid"][ir])
  high = data_parity.band_hz() >= 12000
  assert stats["per_band"][high].mean() > 0.05 and stats["per_band"][-1] > 0.2
  assert stats["per_band"][~high].mean() < 0.02


@needs_real_audio
def test_float16_cache_moves_quiet_bands_of_the_log_mel(real):
  """Why float32 is the default cache: float16 rounding noise (white, ~1e-4 of the clip's level)
  is small where the clip has content but lifts bands far below it (FSDD above 4 kHz)."""
  hz = data_parity.band_hz()
  ir = np.array([k == "ir" for k in real["kind"]])
  on_ir = data_parity.band_stats(real["mel_fp16"][ir], real["mel"][ir], real["valid"][ir])
  assert on_ir["mean"] < 2e-3 and on_ir["per_band"].max() < 2e-2
  on_fsdd = data_parity.band_stats(real["mel_fp16"][~ir], real["mel"][~ir], real["valid"][~ir])
  assert on_fsdd["per_band"][hz < 4000].mean() < 1e-2
  assert on_fsdd["per_band"][hz >= 8000].mean() > 0.05 and on_fsdd["max"] > 0.5
