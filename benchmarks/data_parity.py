"""The data path beside the d24/25 PyTorch reference, on the real clips of ../shared/data.

    python benchmarks/data_parity.py [--fsdd 200] [--data ../shared/data]

Prints, for MicIRP (44.1 / 48 kHz → 32 kHz), the 1-s room impulse response rir_clap (44.1 kHz)
and FSDD (8 kHz → 32 kHz; 8 → 16 kHz for the resampler only):

* resampler: ours (`audio_io.resample`, "sinc_hann" and "soxr_hq") against torchaudio's
  `transforms.Resample` (float64-built kernel, the reference's module) and `functional.resample`
  (float32-built kernel): max abs and relative RMS error of the waveform; and the DCASE25 log-mel
  (`frontends.log_mel`, no augmentation) of each resampled clip against that of torchaudio's;
* the float16 cache: the DCASE25 log-mel of the float16-rounded waveform against float32, per
  band (mean abs difference in natural-log units), highest bands and worst bands;
* the frontend: ours against `torchaudio.transforms.MelSpectrogram` (the d24/25 settings) +
  log(x + 1e-5) on the torchaudio-resampled clips.
Log-mel statistics count only frames whose centre lies inside the clip (clips are zero-padded to
1 s as the loader does; the padding frames agree trivially). Timing of the resampler per clip.
Needs torch and torchaudio (`torchaudio.functional.resample`, `transforms.MelSpectrogram`).
"""
from __future__ import annotations

import argparse
import functools
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jax_asc.data import audio_io  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
SR = 32000


def real_clips(data: str, fsdd: int) -> dict:
  """{set name: [(name, waveform float32, rate)]} of the real sets present below `data`."""
  sets = {}
  for name, pattern, limit in (("micirp", "micirp/*.wav", None), ("rir", "rir/*.wav", None),
                               ("fsdd", "fsdd/*.wav", fsdd)):
    paths = sorted(glob.glob(os.path.join(data, pattern)))
    if limit is not None:   # a fixed spread over speakers and digits
      paths = paths[::max(1, len(paths) // limit)][:limit]
    clips = []
    for path in paths:
      waveform, rate = audio_io.read_audio(path)
      clips.append((os.path.basename(path), waveform, rate))
    if clips:
      sets[name] = clips
  return sets


def torch_resample(waveform: np.ndarray, source: int, target: int, kind: str = "transform"):
  import torch
  import torchaudio
  x = torch.from_numpy(np.asarray(waveform, np.float32))[None]
  if kind == "transform":   # the reference's module: kernel built in float64, kept as float32
    y = torchaudio.transforms.Resample(source, target, resampling_method="sinc_interp_hann",
                                       lowpass_filter_width=6, rolloff=0.99)(x)
  else:
    y = torchaudio.functional.resample(x, source, target, lowpass_filter_width=6, rolloff=0.99,
                                       resampling_method="sinc_interp_hann")
  return y[0].numpy()


def torch_log_mel(waveforms: np.ndarray) -> np.ndarray:
  """The d24/25 reference frontend (no augmentation) of (B, samples) at 32 kHz."""
  import torch
  import torchaudio
  mel = torchaudio.transforms.MelSpectrogram(
      sample_rate=SR, n_fft=4096, win_length=3072, hop_length=500, n_mels=256, f_min=0.0,
      f_max=None, power=2.0, mel_scale="htk", norm=None, center=True, pad_mode="reflect")
  with torch.no_grad():
    return torch.log(mel(torch.from_numpy(np.asarray(waveforms, np.float32))) + 1e-5).numpy()


@functools.lru_cache(maxsize=1)
def _jitted_log_mel():
  import jax
  from jax_asc.audio import frontends
  return jax.jit(lambda x: frontends.log_mel(x, frontends.DCASE25))


def our_log_mel(waveforms: np.ndarray) -> np.ndarray:
  """`frontends.log_mel` with the DCASE25 settings, no augmentation, of (B, samples)."""
  return np.asarray(_jitted_log_mel()(np.asarray(waveforms, np.float32)))


def to_one_second(waveforms: list) -> tuple:
  """(B, 32000) zero-padded / cut, and (B, 65) masks of frames centred inside each clip."""
  batch = np.stack([audio_io.fit_length(w, SR) for w in waveforms])
  lengths = np.array([min(len(w), SR) for w in waveforms])
  frames = 1 + SR // 500
  valid = (np.arange(frames)[None, :] * 500) < lengths[:, None]
  return batch, valid


def wave_errors(ours: np.ndarray, reference: np.ndarray) -> tuple:
  """(max abs, relative RMS) of ours against the reference."""
  diff = ours.astype(np.float64) - reference
  power = np.mean(reference.astype(np.float64) ** 2)
  return np.abs(diff).max(), np.sqrt(np.mean(diff ** 2) / power)


def band_stats(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> dict:
  """|a − b| of (B, 256, T) log-mels (b the reference) over valid frames: max, mean, per-band
  mean, and the max where the reference mel power is ≥ 1e-3 (100× the log floor)."""
  diff = np.abs(a.astype(np.float64) - b)                           # (B, F, T)
  mask = np.broadcast_to(valid[:, None, :], diff.shape)
  per_band = (diff * mask).sum(axis=(0, 2)) / mask[:, 0].sum()
  loud = mask & (b >= np.log(1e-3))
  return dict(max=float(diff[mask].max()), max_loud=float(diff[loud].max(initial=0.0)),
              mean=float(per_band.mean()), per_band=per_band)


def band_hz() -> np.ndarray:
  """Centre frequency of each DCASE25 mel band (HTK, 0–16 kHz, 256 bands)."""
  mels = np.linspace(0.0, 2595.0 * np.log10(1.0 + 16000.0 / 700.0), 258)[1:-1]
  return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)


def measure(sets: dict) -> dict:
  """Every number of the module docstring, as a dict (the tests call this on a subset)."""
  results = {"resample": [], "logmel": [], "fp16": [], "frontend": [], "timing": []}
  hz = band_hz()
  for set_name, clips in sets.items():
    rates = sorted({rate for _, _, rate in clips})
    targets = [SR] + ([16000] if set_name == "fsdd" else [])
    for target in targets:
      for rate in rates:
        group = [w for _, w, r in clips if r == rate]
        ref = [torch_resample(w, rate, target) for w in group]
        ref_fn = [torch_resample(w, rate, target, "functional") for w in group]
        ours = {m: [audio_io.resample(w, rate, target, m) for w in group]
                for m in audio_io.RESAMPLERS}
        for method, outs in ours.items():
          assert all(len(o) == len(r) or method == "soxr_hq" for o, r in zip(outs, ref))
          n = [min(len(o), len(r)) for o, r in zip(outs, ref)]
          errs = [wave_errors(o[:k], r[:k]) for o, r, k in zip(outs, ref, n)]
          errs_fn = [wave_errors(o[:k], r[:k]) for o, r, k in zip(outs, ref_fn, n)]
          results["resample"].append(dict(
              set=set_name, rate=rate, target=target, method=method, clips=len(group),
              max_abs=max(e[0] for e in errs), rel_rms=max(e[1] for e in errs),
              max_abs_functional=max(e[0] for e in errs_fn),
              rel_rms_functional=max(e[1] for e in errs_fn),
              length_matches=all(len(o) == len(r) for o, r in zip(outs, ref))))
        if target != SR:
          continue
        ref_batch, valid = to_one_second(ref)
        ref_mel = torch_log_mel(ref_batch)
        our_ref_mel = our_log_mel(ref_batch)
        for method, outs in ours.items():
          stats = band_stats(our_log_mel(to_one_second(outs)[0]), our_ref_mel, valid)
          results["logmel"].append(dict(set=set_name, rate=rate, method=method, **stats))
        # float16 cache: the stored waveform rounded to float16 (the reference resampler's)
        fp16 = ref_batch.astype(np.float16).astype(np.float32)
        stats = band_stats(our_log_mel(fp16), our_ref_mel, valid)
        results["fp16"].append(dict(set=set_name, rate=rate, hz=hz, **stats))
        stats = band_stats(our_ref_mel, ref_mel, valid)
        results["frontend"].append(dict(set=set_name, rate=rate, **stats))
        # timing: one clip of 1 s at this rate (the resampler alone, kernel cached)
        second = np.resize(group[0], rate).astype(np.float32)
        for method in audio_io.RESAMPLERS:
          audio_io.resample(second, rate, target, method)
          start = time.perf_counter()
          for _ in range(20):
            audio_io.resample(second, rate, target, method)
          results["timing"].append(dict(rate=rate, target=target, method=method,
                                        ms=(time.perf_counter() - start) / 20 * 1e3))
  return results


def report(results: dict) -> None:
  print("## resampler against torchaudio (Resample transform | functional.resample)")
  print(f"{'set':7} {'rate':>6} {'→':>6} {'method':9} {'clips':>5} {'max abs':>9} {'rel RMS':>9}"
        f" {'fn max':>9} {'fn RMS':>9} length")
  for r in results["resample"]:
    print(f"{r['set']:7} {r['rate']:6d} {r['target']:6d} {r['method']:9} {r['clips']:5d} "
          f"{r['max_abs']:9.2e} {r['rel_rms']:9.2e} {r['max_abs_functional']:9.2e} "
          f"{r['rel_rms_functional']:9.2e} {'=' if r['length_matches'] else '≠'}")
  hz = band_hz()
  top = hz >= 12000
  print("\n## DCASE25 log-mel of our resampled clips against torchaudio-resampled (nat)")
  print(f"{'set':7} {'rate':>6} {'method':9} {'max':>8} {'max≥1e-3':>8} {'mean':>8} {'≥12k':>8} "
        f"{'worst band (mean)':>18}")
  for r in results["logmel"]:
    worst = int(np.argmax(r["per_band"]))
    print(f"{r['set']:7} {r['rate']:6d} {r['method']:9} {r['max']:8.2e} {r['max_loud']:8.2e} "
          f"{r['mean']:8.2e} "
          f"{r['per_band'][top].mean():8.2e} {r['per_band'][worst]:8.2e} @{hz[worst]:6.0f} Hz")
  print("\n## float16 cache: log-mel of float16-rounded clips against float32 (nat)")
  for r in results["fp16"]:
    worst = int(np.argmax(r["per_band"]))
    print(f"{r['set']:7} {r['rate']:6d} max {r['max']:.3f} (where mel ≥ 1e-3: "
          f"{r['max_loud']:.1e})  mean {r['mean']:.2e}  ≥12k {r['per_band'][top].mean():.2e}  "
          f"worst band {r['per_band'][worst]:.3f} @{hz[worst]:.0f} Hz")
    edges = [0, 1000, 2000, 4000, 8000, 12000, 14000, 16000]
    cells = [f"{lo / 1000:g}-{hi / 1000:g}k {r['per_band'][(hz >= lo) & (hz <= hi)].mean():.1e}"
             for lo, hi in zip(edges[:-1], edges[1:])]
    print("        per band group (mean |Δ|):", ", ".join(cells))
  print("\n## frontend: ours against torchaudio MelSpectrogram + log(x + 1e-5) (nat)")
  for r in results["frontend"]:
    print(f"{r['set']:7} {r['rate']:6d} max {r['max']:.2e}  (where mel ≥ 1e-3: "
          f"{r['max_loud']:.2e})  mean {r['mean']:.2e}")
  print("\n## resampler time per 1-s clip (ms)")
  for r in results["timing"]:
    print(f"{r['rate']:6d} → {r['target']:6d} {r['method']:9} {r['ms']:6.2f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default=SHARED_DATA)
  parser.add_argument("--fsdd", type=int, default=200, help="FSDD clips (spread over the set)")
  args = parser.parse_args()
  sets = real_clips(args.data, args.fsdd)
  if not sets:
    raise SystemExit(f"no real audio below {args.data}")
  report(measure(sets))


if __name__ == "__main__":
  main()
