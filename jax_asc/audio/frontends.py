"""Log-mel spectrogram frontends in JAX, computed on the device inside `jit`.

One function, `log_mel`, covers every frontend the reports use; each is a `MelSettings` value:

* `DCASE23` (fschmid56/cpjku_dcase23 `AugmentMelSTFT`, also PaSST/CP-ResNet with other hops):
  pre-emphasis, symmetric Hann window, Kaldi mel (triangles in the mel domain), `ln(x + 1e-5)`,
  `(x + 4.5) / 5`, masks applied in the log domain.
* `DCASE25` (CPJKU/dcase2024/2025_task1_baseline): periodic Hann, HTK mel (triangles in Hz),
  `ln(x + 1e-5)`, no normalisation, masks applied to the power mel. `DCASE25_16K` (report
  003): the same at 16 kHz with window, hop and n_fft halved.
* `BEATS` (microsoft/unilm `BEATs.preprocess`): `torchaudio.compliance.kaldi.fbank` at 16 kHz on
  `wav · 2^15` — Kaldi framing (`framing="kaldi"`: snip_edges frames of 25 ms, per-frame DC
  removal and pre-emphasis, povey window, zero-padded to n_fft 512), Kaldi mel 20–8000 Hz,
  `ln(max(x, float32 eps))`, `(x − 15.41663) / (2 · 6.55582)`. `frame_padding_mask` turns a
  sample padding mask into the frames'.

The mel filterbank is built in JAX from `(fmin, fmax)`, so the fmax jitter of the references
(one draw per batch) is a traced value and needs no recompilation. `mel_filterbank` matches
`librosa.filters.mel` (HTK and Slaney scales, with or without Slaney area normalisation) and
`torchaudio.compliance.kaldi.get_mel_banks`; `tests/test_frontends.py` checks both.

Shapes: waveforms are (B, samples), float32; features are (B, n_mels, frames).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc import native
from jax_asc.audio import augment

MEL_SCALES = ("htk", "slaney", "kaldi")
WINDOWS = ("hann", "hann_periodic", "povey")
FRAMINGS = ("stft", "kaldi")
MASK_DOMAINS = ("power", "log")


@dataclasses.dataclass(frozen=True)
class MelSettings:
  """Every setting of a log-mel frontend. Frequencies in Hz, lengths in samples."""
  sample_rate: int = 32000
  n_fft: int = 4096
  win_length: int = 3072
  hop_length: int = 500
  window: str = "hann_periodic"   # "hann" (symmetric, torch periodic=False), "hann_periodic" or
                                  # "povey" (Kaldi: symmetric Hann ** 0.85)
  center: bool = True             # pad n_fft // 2 on both sides before framing
  # "stft": torch.stft's frames of n_fft samples, the window centred in them, pre-emphasis over
  # the whole clip. "kaldi": Kaldi's snip_edges frames of win_length samples (1 + (S − win) // hop
  # of them, no centre padding), each with its DC removed (remove_dc), pre-emphasised in place
  # (its first sample replicated), windowed, then zero-padded on the right to n_fft.
  framing: str = "stft"
  remove_dc: bool = False         # subtract each frame's mean (framing "kaldi" only)
  input_scale: float = 1.0        # waveform · input_scale first (BEATs: 2^15, int16 range)
  pad_mode: str = "reflect"       # "reflect" or "constant" (librosa's default)
  n_mels: int = 256
  fmin: float = 0.0
  fmax: Optional[float] = None    # None: sample_rate / 2
  mel_scale: str = "htk"          # "htk", "slaney" or "kaldi"
  mel_norm: Optional[str] = None  # None or "slaney" (area normalisation; not for kaldi)
  power: float = 2.0
  preemphasis: float = 0.0        # y[n] = x[n+1] - c * x[n] (length - 1), 0 = off
  log_eps: float = 1e-5           # log(mel + log_eps), or log(max(mel, log_eps)) with log_floor
  log_floor: bool = False         # Kaldi's floor instead of the offset
  norm_shift: float = 0.0         # features = (log_mel + norm_shift) / norm_scale
  norm_scale: float = 1.0
  mask_domain: str = "power"      # where SpecAugment masks are applied (mask value 0)

  def __post_init__(self):
    _check_choice("window", self.window, WINDOWS)
    _check_choice("mel_scale", self.mel_scale, MEL_SCALES)
    _check_choice("mask_domain", self.mask_domain, MASK_DOMAINS)
    _check_choice("pad_mode", self.pad_mode, ("reflect", "constant"))
    _check_choice("framing", self.framing, FRAMINGS)
    if self.framing == "kaldi" and self.center:
      raise ValueError("framing='kaldi' frames without centre padding (snip_edges): set "
                       "center=False")
    if self.remove_dc and self.framing != "kaldi":
      raise ValueError("remove_dc works per Kaldi frame: it needs framing='kaldi'")
    if self.mel_norm not in (None, "slaney"):
      raise ValueError(f"mel_norm must be None or 'slaney', got {self.mel_norm!r}")
    if self.mel_scale == "kaldi" and self.mel_norm is not None:
      raise ValueError("the Kaldi mel banks are never normalised: set mel_norm=None")
    if self.win_length > self.n_fft:
      raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")

  @property
  def n_freqs(self) -> int:
    return self.n_fft // 2 + 1

  @property
  def nyquist(self) -> float:
    return self.sample_rate / 2

  def num_frames(self, num_samples: int) -> int:
    """Frames produced for a clip of `num_samples` samples."""
    if self.framing == "kaldi":
      return 1 + (num_samples - self.win_length) // self.hop_length
    n = num_samples - (1 if self.preemphasis else 0)
    if self.center:
      return 1 + n // self.hop_length
    return 1 + (n - self.n_fft) // self.hop_length


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# The two CPJKU frontends (see ../shared/reference/models_and_frontends.md §4).
DCASE23 = MelSettings(
    window="hann", mel_scale="kaldi", preemphasis=0.97, fmax=15500.0,
    norm_shift=4.5, norm_scale=5.0, mask_domain="log")
DCASE25 = MelSettings(window="hann_periodic", mel_scale="htk", fmax=None, mask_domain="power")
# PaSST (kkoutini/PaSST, hear21passt `AugmentMelSTFT` defaults): 128 Kaldi mels, n_fft 1024,
# window 800, hop 320 (100 frames per second), fmax 15000 (sr/2 − fmax_aug_range/2 with 2000).
PASST = dataclasses.replace(DCASE23, n_fft=1024, win_length=800, hop_length=320, n_mels=128,
                            fmax=15000.0)
# CP-ResNet teachers (d23): the DCASE23 frontend with hop 750 (43 frames per second).
CP_RESNET = dataclasses.replace(DCASE23, hop_length=750)
# M2D at 32 kHz (nttcslab/m2d `portable_m2d.py`: nnAudio's MelSpectrogram with its defaults, a
# periodic Hann, centred reflect padding, Slaney mels with area normalisation; then
# `log(mel + float32 eps)`): 80 mels, n_fft = window 800, hop 320, 50–16000 Hz; a 10-s clip gives
# 1001 frames. Normalised by the checkpoint's `norm_stats` (mean, std): `m2d(mean, std)`.
M2D = MelSettings(sample_rate=32000, n_fft=800, win_length=800, hop_length=320,
                  window="hann_periodic", center=True, pad_mode="reflect", n_mels=80, fmin=50.0,
                  fmax=16000.0, mel_scale="slaney", mel_norm="slaney",
                  log_eps=float(np.finfo(np.float32).eps))


def m2d(mean: float = 0.0, std: float = 1.0) -> MelSettings:
  """The M2D frontend normalised as `(log_mel − mean) / std` (a checkpoint's `norm_stats`)."""
  if std <= 0:
    raise ValueError(f"M2D norm_stats std must be > 0, got {std}")
  return dataclasses.replace(M2D, norm_shift=-float(mean), norm_scale=float(std))


# BEATs (microsoft/unilm `beats/BEATs.py` `preprocess`: `ta_kaldi.fbank(wav · 2^15,
# num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10)` with Kaldi's
# defaults, then `(fbank − 15.41663) / (2 · 6.55582)`): 998 frames per 10 s. Kaldi's mel banks
# are ours with mel_scale "kaldi" (high_freq 0 → Nyquist).
BEATS_FBANK_MEAN, BEATS_FBANK_STD = 15.41663, 6.55582
BEATS = MelSettings(sample_rate=16000, n_fft=512, win_length=400, hop_length=160,
                    window="povey", center=False, framing="kaldi", remove_dc=True,
                    input_scale=2.0 ** 15, n_mels=128, fmin=20.0, fmax=None, mel_scale="kaldi",
                    preemphasis=0.97, log_eps=float(np.finfo(np.float32).eps), log_floor=True,
                    norm_shift=-BEATS_FBANK_MEAN, norm_scale=2 * BEATS_FBANK_STD,
                    mask_domain="log")

# Report 003 §3: the DCASE25 frontend at 16 kHz (BEATs' rate) with window, hop and FFT size
# halved, so the same 96 ms window, 15.6 ms hop and 7.8 Hz bins: 256 mels × 65 frames per second.
DCASE25_16K = dataclasses.replace(DCASE25, sample_rate=16000, n_fft=2048, win_length=1536,
                                  hop_length=250)

PRESETS = {"dcase23": DCASE23, "dcase25": DCASE25, "dcase25_16k": DCASE25_16K, "passt": PASST,
           "cp_resnet": CP_RESNET, "m2d": M2D, "beats": BEATS}


def settings_from_config(cfg) -> MelSettings:
  """A `MelSettings` from a config dict: `preset` plus overrides of any of its fields."""
  cfg = dict(cfg)
  preset = cfg.pop("preset", None)
  if preset is not None and preset not in PRESETS:
    raise ValueError(f"frontend.preset must be one of {sorted(PRESETS)}, got {preset!r}")
  base = PRESETS[preset] if preset else MelSettings()
  valid = {f.name for f in dataclasses.fields(MelSettings)}
  unknown = sorted(set(cfg) - valid)
  if unknown:
    raise ValueError(f"unknown frontend settings {unknown}; valid: {sorted(valid)}")
  return dataclasses.replace(base, **cfg)


# ----------------------------------------------------------------------------- mel scales
def hz_to_mel(f, scale: str):
  """Hz → mel on the chosen scale (works on NumPy and JAX arrays)."""
  xp = jnp if isinstance(f, jax.Array) else np
  if scale == "htk":
    return 2595.0 * xp.log10(1.0 + f / 700.0)
  if scale == "kaldi":
    return 1127.0 * xp.log(1.0 + f / 700.0)
  # Slaney: linear below 1 kHz, logarithmic above (librosa `htk=False`).
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return xp.where(f >= min_log_hz,
                  min_log_mel + xp.log(xp.maximum(f, 1e-10) / min_log_hz) / logstep,
                  f / f_sp)


def mel_to_hz(m, scale: str):
  """Inverse of `hz_to_mel`."""
  xp = jnp if isinstance(m, jax.Array) else np
  if scale == "htk":
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
  if scale == "kaldi":
    return 700.0 * (xp.exp(m / 1127.0) - 1.0)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return xp.where(m >= min_log_mel, min_log_hz * xp.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(settings: MelSettings, fmin=None, fmax=None) -> jax.Array:
  """Mel filterbank matrix (n_freqs, n_mels), float32; `fmin`/`fmax` may be traced scalars.

  htk / slaney: `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk, norm)`: triangles in Hz
  between mel-spaced corner frequencies, optionally area-normalised (`2 / (f[i+2] - f[i])`).
  kaldi: `torchaudio.compliance.kaldi.get_mel_banks` (no VTLN): triangles in the mel domain,
  evaluated at bins k·sr/n_fft for k < n_fft/2, the Nyquist bin is 0.
  """
  return mel_bands(settings, fmin, fmax).T


def mel_bands(settings: MelSettings, fmin=None, fmax=None) -> jax.Array:
  """`mel_filterbank` transposed, (n_mels, n_freqs): one row per band, as the projection reads
  it (built in this layout, so a traced filterbank needs no transpose)."""
  if fmin is None and fmax is None:
    return jnp.asarray(_bands(settings, None, None, np, np.float64), jnp.float32)
  return _bands(settings, fmin, fmax, jnp, jnp.float32)


def static_mel_filterbank(settings: MelSettings) -> np.ndarray:
  """`mel_filterbank` of fixed corners as a float64 NumPy array (as librosa computes it)."""
  return _bands(settings, None, None, np, np.float64).T


def _bands(settings: MelSettings, fmin, fmax, xp, dtype):
  """(n_mels, n_freqs) weights."""
  fmin = xp.asarray(settings.fmin if fmin is None else fmin, dtype)
  fmax = xp.asarray((settings.fmax or settings.nyquist) if fmax is None else fmax, dtype)
  scale, n_mels = settings.mel_scale, settings.n_mels
  fraction = xp.linspace(0.0, 1.0, n_mels + 2, dtype=dtype)
  mel_lo, mel_hi = hz_to_mel(fmin, scale), hz_to_mel(fmax, scale)
  mel_points = (mel_lo + (mel_hi - mel_lo) * fraction)[:, None]
  if scale == "kaldi":
    k = xp.arange(settings.n_freqs, dtype=dtype)
    mel_bins = hz_to_mel(k * (settings.sample_rate / settings.n_fft), scale)[None, :]
    left, centre, right = mel_points[:-2], mel_points[1:-1], mel_points[2:]
    up = (mel_bins - left) / (centre - left)
    down = (right - mel_bins) / (right - centre)
    # The Nyquist bin is 0 (masked in place: a concatenated column costs a pass per step).
    weights = xp.maximum(0.0, xp.minimum(up, down)) * (k < settings.n_fft // 2)
  else:
    hz_points = mel_to_hz(mel_points, scale)
    fft_freqs = xp.linspace(0.0, settings.nyquist, settings.n_freqs, dtype=dtype)[None, :]
    widths = xp.diff(hz_points, axis=0)
    lower = (fft_freqs - hz_points[:-2]) / widths[:-1]
    upper = (hz_points[2:] - fft_freqs) / widths[1:]
    weights = xp.maximum(0.0, xp.minimum(lower, upper))
    if settings.mel_norm == "slaney":
      weights = weights * (2.0 / (hz_points[2:] - hz_points[:-2]))
  return weights


# ----------------------------------------------------------------------------- STFT
def window_values(settings: MelSettings) -> np.ndarray:
  """The analysis window, (win_length,) float64: Hann (symmetric or periodic) or Kaldi's povey
  window, the symmetric Hann to the power 0.85."""
  n = settings.win_length
  periodic = settings.window == "hann_periodic"
  denom = n if periodic else n - 1
  win = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / denom)
  return win ** 0.85 if settings.window == "povey" else win


def window_array(settings: MelSettings) -> np.ndarray:
  """The analysis window zero-padded (centred) to n_fft, as torch.stft and librosa do."""
  n = settings.win_length
  left = (settings.n_fft - n) // 2
  return np.pad(window_values(settings), (left, settings.n_fft - n - left)).astype(np.float32)


def _scaled(waveform: jax.Array, settings: MelSettings) -> jax.Array:
  """float32 waveform · input_scale (no multiplication at 1)."""
  x = waveform.astype(jnp.float32)
  return x * settings.input_scale if settings.input_scale != 1.0 else x


def _kaldi_frames(waveform: jax.Array, settings: MelSettings) -> jax.Array:
  """(B, samples) → windowed frames (B, frames, n_fft), float32, as Kaldi's `_get_window`
  (dither 0): snip_edges framing, DC removal, per-frame pre-emphasis, window, zero padding on the
  right to n_fft."""
  x = _scaled(waveform, settings)
  win, hop = settings.win_length, settings.hop_length
  if x.shape[1] < win:
    raise ValueError(f"clip of {waveform.shape[1]} samples is shorter than one frame ({win})")
  n_frames = settings.num_frames(x.shape[1])
  starts = np.arange(n_frames) * hop
  frames = x[:, starts[:, None] + np.arange(win)[None, :]]              # (B, T, win)
  if settings.remove_dc:
    frames = frames - jnp.mean(frames, axis=-1, keepdims=True)
  if settings.preemphasis:
    previous = jnp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = frames - settings.preemphasis * previous
  frames = frames * window_values(settings).astype(np.float32)
  return jnp.pad(frames, ((0, 0), (0, 0), (0, settings.n_fft - win)))


def frame_padding_mask(sample_padding: jax.Array, settings: MelSettings) -> jax.Array:
  """(B, samples) bool, True = padding → (B, frames) bool, True where a frame reads any padded
  sample (frames as `log_mel` makes them). With padding only at the end, a clip's valid frames
  are exactly those it has alone, unpadded (the reference slices instead, unilm #1427)."""
  sample_padding = jnp.asarray(sample_padding, bool)
  n_frames = settings.num_frames(sample_padding.shape[1])
  if settings.framing == "kaldi":
    first, length = 0, settings.win_length
  else:
    # Frames of n_fft samples of the pre-emphasised (one shorter: sample n+1 also reads n),
    # centre-padded signal; the padding reads the clip's edges.
    first, length = -(settings.n_fft // 2 if settings.center else 0), settings.n_fft
  starts = first + np.arange(n_frames) * settings.hop_length
  stop = starts + length + (1 if settings.preemphasis and settings.framing == "stft" else 0)
  # Prefix counts of padded samples: frame t reads samples [max(start, 0), min(stop, S)).
  counts = jnp.concatenate([jnp.zeros((sample_padding.shape[0], 1), jnp.int32),
                            jnp.cumsum(sample_padding.astype(jnp.int32), axis=1)], axis=1)
  lo = np.clip(starts, 0, sample_padding.shape[1])
  hi = np.clip(stop, 0, sample_padding.shape[1])
  return (counts[:, hi] - counts[:, lo]) > 0


def _framed_input(waveform: jax.Array, settings: MelSettings) -> jax.Array:
  """(B, samples) → float32 (B, padded samples): pre-emphasis, then centre padding."""
  x = _scaled(waveform, settings)
  if settings.preemphasis:
    x = x[:, 1:] - settings.preemphasis * x[:, :-1]
  if settings.center:
    pad = settings.n_fft // 2
    x = jnp.pad(x, ((0, 0), (pad, pad)), mode=settings.pad_mode)
  if x.shape[1] < settings.n_fft:
    raise ValueError(f"clip of {waveform.shape[1]} samples is shorter than one frame")
  return x


def power_spectrogram(waveform: jax.Array, settings: MelSettings) -> jax.Array:
  """|STFT|^power of (B, samples) → (B, frames, n_freqs), float32."""
  if settings.framing == "kaldi":
    frames = _kaldi_frames(waveform, settings)                          # (B, T, n_fft)
  else:
    x = _framed_input(waveform, settings)
    n_frames = 1 + (x.shape[1] - settings.n_fft) // settings.hop_length
    starts = np.arange(n_frames) * settings.hop_length
    frames = x[:, starts[:, None] + np.arange(settings.n_fft)[None, :]]   # (B, T, n_fft)
    frames = frames * window_array(settings)
  spectrum = jnp.fft.rfft(frames, axis=-1)
  magnitude_sq = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  if settings.power == 2.0:
    return magnitude_sq
  return magnitude_sq ** (settings.power / 2.0)


def band_supports(settings: MelSettings, fmin_range: int = 0,
                  fmax_range: int = 0, fmax_beyond_nyquist: bool = False) -> tuple:
  """(lo, hi) int32 (n_mels,): FFT bins lo[m] ≤ k < hi[m] hold every nonzero weight of band m
  for any corner jitter within the ranges (`jitter_corner`: fmin + [0, fmin_range),
  fmax + fmax_range // 2 − [0, fmax_range)). Corners move every band edge monotonically, so the
  two extreme filterbanks bound all others; one bin of margin covers float32 rounding.

  The jittered fmax is clipped at Nyquist unless `fmax_beyond_nyquist` (`FrontendAugment`). Then
  the top bands of the highest filterbank may lie above Nyquist, all zero: their support runs to
  the last bin; a band above Nyquist even in the lowest filterbank is zero for every jitter and
  gets an empty support."""
  fmax = settings.fmax or settings.nyquist
  top = np.inf if fmax_beyond_nyquist else settings.nyquist
  low = dataclasses.replace(settings, fmin=settings.fmin,
                            fmax=min(fmax + fmax_range // 2 - max(fmax_range - 1, 0), top))
  high = dataclasses.replace(settings, fmin=settings.fmin + max(fmin_range - 1, 0),
                             fmax=min(fmax + fmax_range // 2, top))
  n_freqs = settings.n_freqs
  lo_nonzero = static_mel_filterbank(low) > 0
  hi_nonzero = static_mel_filterbank(high) > 0
  first = np.where(lo_nonzero.any(0), lo_nonzero.argmax(0), 0)
  # A band all zero in the highest filterbank: above Nyquist there (only when fmax may pass it).
  empty_last = n_freqs if fmax_beyond_nyquist else 0
  last = np.where(hi_nonzero.any(0), n_freqs - hi_nonzero[::-1].argmax(0), empty_last)
  lo = np.clip(np.minimum(first, last) - 1, 0, n_freqs)
  hi = np.clip(np.maximum(first, last) + 1, 0, n_freqs)
  if fmax_beyond_nyquist:
    # Left corners of the lowest filterbank in Hz (every mel scale is monotone in Hz).
    mel_lo, mel_hi = (hz_to_mel(np.float64(f), settings.mel_scale) for f in (low.fmin, low.fmax))
    left = mel_to_hz(np.linspace(mel_lo, mel_hi, settings.n_mels + 2)[:-2], settings.mel_scale)
    never = left >= settings.nyquist
    lo, hi = np.where(never, n_freqs, lo), np.where(never, n_freqs, hi)
  return lo.astype(np.int32), hi.astype(np.int32)


def _native_mel(settings: MelSettings, supports):
  """The CPU kernel (pre-emphasis, centre padding, framing, window, real FFT, |·|², banded mel)
  for (waveform, bands)."""
  lo, hi = supports

  def compute(waveform, bands):
    x = _scaled(waveform, settings)
    emphasised = x.shape[1] - (1 if settings.preemphasis else 0)
    pad = settings.n_fft // 2 if settings.center else 0
    preemphasis = settings.preemphasis
    if settings.pad_mode == "reflect" and pad >= emphasised:
      # jnp.pad reflects more than once for clips shorter than the padding; the kernel does not.
      x, pad, preemphasis = _framed_input(waveform, settings), 0, 0.0
      emphasised = x.shape[1]
    frames = 1 + (emphasised + 2 * pad - settings.n_fft) // settings.hop_length
    if frames < 1:
      raise ValueError(f"clip of {waveform.shape[1]} samples is shorter than one frame")
    out = jax.ShapeDtypeStruct((x.shape[0], settings.n_mels, frames), jnp.float32)
    return jax.ffi.ffi_call("jax_asc_mel_spectrogram", out)(
        x, jnp.asarray(window_array(settings)), bands, jnp.asarray(lo), jnp.asarray(hi),
        n_fft=np.int64(settings.n_fft), hop=np.int64(settings.hop_length), pad=np.int64(pad),
        reflect=np.int64(settings.pad_mode == "reflect"), preemphasis=np.float32(preemphasis))
  return compute


def _xla_mel(settings: MelSettings):
  def compute(waveform, bands):
    spec = power_spectrogram(waveform, settings)                       # (B, T, F)
    return jnp.einsum("btf,mf->bmt", spec, bands, precision=jax.lax.Precision.HIGHEST)
  return compute


def native_mel_supported(settings: MelSettings) -> bool:
  """Whether the CPU kernel computes `settings` exactly as the XLA path (when it is available):
  power 2, n_fft a power of two and torch.stft framing. Kaldi framing (the BEATs fbank: per-frame
  DC removal and pre-emphasis) always takes the XLA path."""
  n_fft = settings.n_fft
  return settings.power == 2.0 and n_fft & (n_fft - 1) == 0 and settings.framing == "stft"


def mel_spectrogram(waveform, settings: MelSettings, fmin=None, fmax=None, *,
                    corner_ranges: tuple = (0, 0),
                    fmax_beyond_nyquist: bool = False) -> jax.Array:
  """Mel power spectrogram (B, n_mels, frames) of (B, samples).

  `fmin`/`fmax` may be traced (the corner jitter); `corner_ranges` = (fmin_aug_range,
  fmax_aug_range) bounds them for the CPU kernel's banded mel projection, fmax above Nyquist
  included when `fmax_beyond_nyquist` (`band_supports`). On CPU with the
  native kernels (`jax_asc.native`; `native_mel_supported`) one pass per frame computes
  pre-emphasis, centre padding, framing, window, FFT, power and mel; elsewhere (Kaldi framing
  included) XLA's FFT and a dense projection.
  """
  bands = mel_bands(settings, fmin, fmax)
  xla = _xla_mel(settings)
  if not (native.available() and native_mel_supported(settings)):
    return xla(waveform, bands)
  cpu = _native_mel(settings, band_supports(settings, *corner_ranges,
                                            fmax_beyond_nyquist=fmax_beyond_nyquist))
  return jax.lax.platform_dependent(waveform, bands, cpu=cpu, default=xla)


@dataclasses.dataclass(frozen=True)
class FrontendAugment:
  """Training-time frontend augmentation (reference defaults in the configs).

  fmin_aug_range / fmax_aug_range: integer ranges of the one-per-batch corner jitter
  (d23: fmin += randint(fmin_range); fmax += fmax_range // 2 - randint(fmax_range)); 0 or 1 = off.
  freq_mask / time_mask: SpecAugment maximum widths in bins / frames; 0 = off.
  iid_masks: one mask per example (True) or one shared by the batch (the d23 reference env).
  fmax_beyond_nyquist: False (every recipe before report 003): the jittered fmax is clipped at
    Nyquist, as in the references (d23's AugmentMelSTFT sets fmax = sr/2 − fmax_aug_range/2 so
    the draw never passes Nyquist, and torchaudio's Kaldi banks reject fmax > Nyquist); with
    fmax at Nyquist the jitter then only lowers it. True: fmax moves both ways (report 003's
    frequency shift, fmax = Nyquist ± 1000 Hz with fmax_aug_range 2000); above Nyquist the
    filterbank keeps its mel spacing up to the raised fmax and is cut at Nyquist: its top
    bands get fewer STFT bins, the topmost none (those bands read log(log_eps)).
  """
  fmin_aug_range: int = 0
  fmax_aug_range: int = 0
  freq_mask: int = 0
  time_mask: int = 0
  iid_masks: bool = True
  fmax_beyond_nyquist: bool = False


def log_mel(waveform: jax.Array, settings: MelSettings, *,
            key: Optional[jax.Array] = None,
            aug: Optional[FrontendAugment] = None) -> jax.Array:
  """Normalised log-mel features (B, n_mels, frames) of waveforms (B, samples).

  With `key` and `aug`, applies the training-time augmentation: fmin/fmax jitter, then frequency
  and time masks in `settings.mask_domain`. Without, computes the deterministic evaluation frontend.
  """
  fmin = fmax = None
  if key is not None and aug is not None:
    k_fmin, k_fmax, k_freq, k_time = jax.random.split(key, 4)
    fmin = augment.jitter_corner(k_fmin, settings.fmin, aug.fmin_aug_range, direction=+1)
    fmax = augment.jitter_corner(k_fmax, settings.fmax or settings.nyquist, aug.fmax_aug_range,
                                 direction=-1)
    if not aug.fmax_beyond_nyquist:
      fmax = jnp.minimum(fmax, settings.nyquist)
  ranges = (0, 0) if fmin is None else (aug.fmin_aug_range, aug.fmax_aug_range)
  beyond = fmin is not None and aug.fmax_beyond_nyquist
  mel = mel_spectrogram(waveform, settings, fmin, fmax, corner_ranges=ranges,
                        fmax_beyond_nyquist=beyond)

  def masks(x):
    if key is None or aug is None:
      return x
    x = augment.frequency_mask(k_freq, x, aug.freq_mask, iid=aug.iid_masks)
    return augment.time_mask(k_time, x, aug.time_mask, iid=aug.iid_masks)

  if settings.mask_domain == "power":
    mel = masks(mel)
  if settings.log_floor:
    features = jnp.log(jnp.maximum(mel, settings.log_eps))
  else:
    features = jnp.log(mel + settings.log_eps)
  if settings.mask_domain == "log":
    features = masks(features)
  if settings.norm_shift or settings.norm_scale != 1.0:
    features = (features + settings.norm_shift) / settings.norm_scale
  return features


def augment_from_config(cfg) -> FrontendAugment:
  cfg = dict(cfg)
  valid = {f.name for f in dataclasses.fields(FrontendAugment)}
  unknown = sorted(set(cfg) - valid)
  if unknown:
    raise ValueError(f"unknown frontend augmentation settings {unknown}; valid: {sorted(valid)}")
  return FrontendAugment(**cfg)
