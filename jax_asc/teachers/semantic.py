"""Semantic teachers (report 004 §2.3): a frozen Qwen2-Audio audio encoder that hears the clean
sum of each mixture's dry sources, its tokens computed once and cached per mixture id.

The teacher is far too large to run in every step on a small machine (Qwen2-Audio's encoder:
32 layers of width 1280, about 640 M parameters, over a 30-s window), so stage `teacher_cache`
runs it once over the splits it is asked for and training reads the cache:

  input     the sum of the mixture's dry target sources (the `sources` column (N, K, S):
            report 004 "the teacher receives the sum of the clean dry foreground sources",
            while the student hears the reverberant mixture), resampled to 16 kHz in the graph
  features  Whisper log-mels (`audio.whisper`) of the encoder's window (2·max_source_positions
            frames: 30 s for Qwen2-Audio), zero-padded as the Hugging Face extractor pads
  encoder   `models.qwen_audio.QwenAudioEncoder` with its valid-frame mask; only the positions
            the clip covers run through the transformer (`keep_positions`, exact)
  cached    the valid output frames (25 Hz) average-pooled to `bins` time bins (report 004:
            32): `tokens` (N, bins, d_model) float16

`config.teachers.<name>` (source "qwen_audio"):
  checkpoint  the Qwen2-Audio safetensors (a file, its folder or its index json); only the
              audio tower is read, the language model never. "" = random weights drawn from
              `init_seed` (the smoke chain's tiny teacher)
  encoder     the encoder's sizes (`QWEN2_AUDIO` keys; default Qwen2-Audio's)
  bins        time bins of the cached tokens (32)
  folder      the cache ("" = `<workdir>/teacher_caches/<name>`); runs sharing a teacher and
              data share one folder
  splits      the splits stage `teacher_cache` caches (aliases train / validation / test)
  batch_size  mixtures per teacher call; dtype: float32 | bfloat16 (the encoder's precision)

A cache `<folder>/<split>/` holds `filenames.npy` (N,) the mixture ids, `tokens.npy`, `rows.npy`
(N,) the fingerprint of each mixture's metadata (its JSON: events, files, gains, room) and
`metadata.json`: the teacher's fingerprint (encoder weights, encoder and Whisper settings, bins,
precision, input), the split's rate and length, and the build's figures (seconds, mixtures/s,
bytes on disk and per 1,000 mixtures, peak memory). A build writes in chunks and resumes after
a crash; the folder appears complete or not at all. Reading it, every mixture id of the split
must be there with the same metadata fingerprint and the teacher's fingerprint must be the
configured one: each is an error naming what differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shutil
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc.audio import resample as resample_lib
from jax_asc.audio import whisper
from jax_asc.models.layers import adaptive_avg_pool_time
from jax_asc.teachers.cache import CacheMismatchError

SOURCE = "qwen_audio"
# Qwen2-Audio's encoder (= Whisper-large-v3's): `QwenAudioEncoder` sizes.
QWEN2_AUDIO = dict(num_mel_bins=128, d_model=1280, num_layers=32, num_heads=20, ffn_dim=5120,
                   max_source_positions=1500)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TEACHER_RATE = 16000
INPUT = "sum of the dry target sources (column 'sources'), resampled to 16 kHz"
OUTPUT = "tokens"
CHUNK_ROWS = 256     # rows written between progress records (what a resumed build redoes at most)


def encoder_settings(spec, name: str) -> Dict[str, int]:
  """`teachers.<name>.encoder` with Qwen2-Audio's sizes for the keys it leaves out; an unknown
  key is an error naming the valid ones."""
  given = dict(spec.encoder.items()) if spec.encoder is not None else {}
  unknown = sorted(set(given) - set(QWEN2_AUDIO))
  if unknown:
    raise ValueError(f"teachers.{name}.encoder has no setting {unknown}; valid: "
                     f"{sorted(QWEN2_AUDIO)}")
  return {k: int(given.get(k, v)) for k, v in QWEN2_AUDIO.items()}


def _digest(*parts) -> str:
  h = hashlib.sha256()
  for part in parts:
    h.update(part if isinstance(part, bytes) else str(part).encode())
  return h.hexdigest()[:16]


def row_fingerprints(split) -> np.ndarray:
  """(N,) fingerprint of each mixture's `metadata` JSON (what it is made of)."""
  if "metadata" not in split:
    raise ValueError(f"split {split.name!r} of {split.dataset or 'the dataset'} has no "
                     f"'metadata' column: a semantic-teacher cache keys mixtures by id and "
                     f"metadata; columns: {sorted(split.columns)}")
  return np.array([_digest(m) for m in np.asarray(split["metadata"]).tolist()])


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A loaded semantic teacher: `encoder` (Flax module) and its `params`, the Whisper settings of
  its window, `bins`, and the fingerprint of its weights (`weights`)."""
  name: str
  encoder: Any
  params: Any
  whisper: whisper.WhisperSettings
  bins: int
  dtype: str
  weights: str
  checkpoint: str

  @property
  def width(self) -> int:
    return int(self.encoder.d_model)

  def fingerprint(self) -> Dict[str, Any]:
    """Everything that decides the cached tokens of a mixture, besides the mixture."""
    return fingerprint_of(self.weights, encoder_fields(self.encoder), self.bins, self.dtype)


def encoder_fields(encoder) -> Dict[str, int]:
  return {k: int(getattr(encoder, k)) for k in QWEN2_AUDIO}


def _build_encoder(settings: Dict[str, int], dtype: str):
  from jax_asc.models import qwen_audio
  return qwen_audio.QwenAudioEncoder(**settings, dtype=DTYPES[dtype])


def _random_params(encoder, seed: int):
  frames = 2 * int(encoder.max_source_positions)
  x = jnp.zeros((1, int(encoder.num_mel_bins), frames), jnp.float32)
  return jax.jit(encoder.init)(jax.random.PRNGKey(seed), x)["params"]


def check_spec(name: str, spec) -> None:
  if spec.dtype not in DTYPES:
    raise ValueError(f"teachers.{name}.dtype must be one of {sorted(DTYPES)}, got {spec.dtype!r}")
  if int(spec.bins) < 1:
    raise ValueError(f"teachers.{name}.bins must be ≥ 1, got {spec.bins}")
  if int(spec.batch_size) < 1:
    raise ValueError(f"teachers.{name}.batch_size must be ≥ 1, got {spec.batch_size}")


def _random_weights(settings: Dict[str, int], seed: int) -> str:
  """A random teacher's identity: its seed and sizes (not its float bytes, which another
  backend's sampler may round differently)."""
  return "random-" + _digest(seed, json.dumps(settings, sort_keys=True))


def weights_fingerprint(name: str, spec) -> str:
  """The fingerprint of the teacher's weights without building it: the checkpoint's audio-tower
  tensors, or the random initialisation's seed and sizes."""
  from jax_asc.models import convert
  check_spec(name, spec)
  if spec.checkpoint:
    return convert.qwen_audio_fingerprint(spec.checkpoint)
  return _random_weights(encoder_settings(spec, name), int(spec.init_seed))


def _window(settings: Dict[str, int]) -> whisper.WhisperSettings:
  """The Whisper features of the encoder's window: 2·max_source_positions frames."""
  return whisper.WhisperSettings(n_mels=settings["num_mel_bins"],
                                 chunk_frames=2 * settings["max_source_positions"])


def fingerprint_of(weights: str, settings: Dict[str, int], bins: int, dtype: str) -> Dict:
  """Everything that decides a mixture's cached tokens, besides the mixture."""
  return {"weights": weights, "encoder": dict(settings), "whisper": _window(settings).to_dict(),
          "bins": int(bins), "dtype": dtype, "input": INPUT}


def expected_fingerprint(name: str, spec) -> Dict:
  """The configured teacher's fingerprint (`fingerprint_of`), without building it."""
  return fingerprint_of(weights_fingerprint(name, spec), encoder_settings(spec, name),
                        spec.bins, spec.dtype)


def load(name: str, spec) -> Teacher:
  """Teacher `name` from its settings: the checkpoint's audio tower converted (missing or unused
  keys are errors), or random weights from `init_seed`."""
  from jax_asc.models import convert
  check_spec(name, spec)
  settings = encoder_settings(spec, name)
  encoder = _build_encoder(settings, spec.dtype)
  if spec.checkpoint:
    state = convert.qwen_audio_state_dict(spec.checkpoint)
    params = convert.qwen_audio_params(state, encoder)
    del state
    weights = convert.qwen_audio_fingerprint(spec.checkpoint)
  else:
    params = _random_params(_build_encoder(settings, "float32"), int(spec.init_seed))
    weights = _random_weights(settings, int(spec.init_seed))
  params = jax.tree.map(lambda v: jnp.asarray(v, DTYPES[spec.dtype]), params)
  return Teacher(name, encoder, params, _window(settings), int(spec.bins), spec.dtype, weights,
                 str(spec.checkpoint))


def token_function(teacher: Teacher, sample_rate: int, num_samples: int) -> Callable:
  """A jitted (params, sources (B, K, S) float32) → tokens (B, bins, d_model) float32.

  Clips have one length, so their valid Whisper frames, the encoder's valid positions and the
  positions it must run (`keep_positions`: the valid ones, rounded up to even) are static."""
  from jax_asc.models import qwen_audio
  samples = resample_lib.output_length(num_samples, sample_rate, TEACHER_RATE)
  window = teacher.whisper
  if samples > window.chunk_samples:
    raise ValueError(f"teacher {teacher.name!r}: mixtures of {samples / TEACHER_RATE:.2f} s are "
                     f"longer than its {window.chunk_samples / TEACHER_RATE:.2f}-s window "
                     f"(2·encoder.max_source_positions frames): Whisper features would cut them")
  frames = -(-samples // window.hop)
  len1, len2 = (int(v) for v in qwen_audio.output_lengths(frames))
  keep = min(len1 + len1 % 2, int(teacher.encoder.max_source_positions))

  @jax.jit
  def tokens(params, sources):
    mono = jnp.sum(sources.astype(jnp.float32), axis=1)
    x = resample_lib.resample(mono, sample_rate, TEACHER_RATE)
    features, valid = whisper.log_mel(x, window)
    hidden, _ = teacher.encoder.apply({"params": params}, features, valid, keep_positions=keep)
    return adaptive_avg_pool_time(hidden[:, :len2].astype(jnp.float32), teacher.bins)
  return tokens


def split_folder(folder: str, split_name: str) -> str:
  return os.path.join(folder, split_name.replace("/", "_"))


def _split_record(split) -> Dict[str, Any]:
  return {"split": split.name, "dataset": split.dataset, "sample_rate": int(split.sample_rate),
          "num_samples": int(split.num_samples), "count": len(split)}


def _differences(expected: Dict, found: Dict, prefix: str = "") -> List[str]:
  out = []
  for key in sorted(set(expected) | set(found)):
    a, b = expected.get(key), found.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: cache {b!r}, configured {a!r}")
  return out


def _disk_bytes(folder: str) -> int:
  return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def build(teacher: Teacher, split, folder: str, batch_size: int,
          log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Caches the teacher's tokens of every mixture of `split` in `<folder>/<split>/` (resuming a
  build a crash left in `<…>.partial`); returns the cache's metadata. An existing cache of the
  same teacher and mixtures is kept; one of another teacher or other mixtures is an error."""
  if "sources" not in split:
    raise ValueError(f"split {split.name!r} of {split.dataset or 'the dataset'} has no "
                     f"'sources' column (the dry targets the semantic teacher hears)")
  if split.per_epoch is not None:
    raise ValueError(f"split {split.name!r} of {split.dataset} is drawn anew every epoch: a "
                     f"teacher cache holds fixed mixtures; set data.s5.on_the_fly_train=False")
  final = split_folder(folder, split.name)
  expected = {"teacher": teacher.fingerprint(), **_split_record(split)}
  rows = row_fingerprints(split)
  if os.path.exists(os.path.join(final, "metadata.json")):
    try:
      problems = check(final, teacher.fingerprint(), split, rows)
    except CacheMismatchError as missing:     # mixtures the cache lacks
      problems = [str(missing).split(": run stage")[0]]
    if problems:
      raise CacheMismatchError(f"{final} holds another teacher cache: " + "; ".join(problems)
                               + f". Delete it or point teachers.{teacher.name}.folder elsewhere")
    log(f"teacher cache {final} is up to date ({len(split)} mixtures)")
    return _metadata(final)
  partial = final + ".partial"
  progress_path = os.path.join(partial, "progress.json")
  done = 0
  if os.path.exists(progress_path):
    with open(progress_path) as f:
      progress = json.load(f)
    if progress.get("expected") == expected and np.array_equal(
        np.load(os.path.join(partial, "rows.npy")), rows):
      done = int(progress["done"])
      log(f"teacher cache {final}: resuming at mixture {done} of {len(split)}")
  if not done:
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    np.save(os.path.join(partial, "filenames.npy"), np.asarray(split.filename, str))
    np.save(os.path.join(partial, "rows.npy"), rows)
  shape = (len(split), teacher.bins, teacher.width)
  store = np.lib.format.open_memmap(os.path.join(partial, "tokens.npy"),
                                    "r+" if done else "w+", np.float16, shape)
  run = token_function(teacher, int(split.sample_rate), int(split.num_samples))
  started, computed = time.time(), 0
  for chunk in range(done, len(split), CHUNK_ROWS):
    end = min(chunk + CHUNK_ROWS, len(split))
    for start in range(chunk, end, batch_size):
      idx = np.arange(start, min(start + batch_size, end))
      padded = np.resize(idx, batch_size)      # a full batch: one compiled shape
      sources = split.audio("sources", padded)
      store[idx] = np.asarray(run(teacher.params, sources))[:len(idx)].astype(np.float16)
      computed += len(idx)
    store.flush()
    done = end
    with open(progress_path + ".tmp", "w") as f:
      json.dump({"expected": expected, "done": done}, f)
    os.replace(progress_path + ".tmp", progress_path)
    log(f"teacher cache {final}: {done}/{len(split)} mixtures, "
        f"{computed / max(time.time() - started, 1e-9):.2f} mixtures/s")
  del store
  seconds = time.time() - started
  disk = _disk_bytes(partial) - os.path.getsize(progress_path)
  figures = {"seconds": round(seconds, 2), "mixtures_computed": computed,
             "mixtures_per_s": round(computed / max(seconds, 1e-9), 3),
             "disk_bytes": disk, "disk_bytes_per_1000": int(round(disk * 1000 / len(split))),
             "tokens_bytes_per_1000": int(np.prod(shape[1:])) * 2 * 1000,
             "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
             "device": jax.devices()[0].device_kind, "batch_size": batch_size}
  stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    figures["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  metadata = dict(expected, outputs={OUTPUT: {"shape": list(shape[1:]), "dtype": "float16"}},
                  build=figures)
  with open(os.path.join(partial, "metadata.json"), "w") as f:
    json.dump(metadata, f, indent=1, sort_keys=True)
  os.replace(partial, final)      # complete: the progress record goes only now
  os.remove(os.path.join(final, "progress.json"))
  return metadata


def _metadata(final: str) -> Dict[str, Any]:
  with open(os.path.join(final, "metadata.json")) as f:
    return json.load(f)


def check(final: str, fingerprint: Dict, split, rows: Optional[np.ndarray] = None) -> List[str]:
  """Why cache `final` does not hold this teacher's tokens of `split`'s mixtures ([] if it
  does): another teacher (naming the settings that differ), sample rate or clip length, or
  mixtures whose metadata differ."""
  meta = _metadata(final)
  problems = [f"teacher {d}" for d in _differences(fingerprint, meta.get("teacher", {}))]
  for key in ("sample_rate", "num_samples"):
    if meta.get(key) != int(getattr(split, key)):
      problems.append(f"{key}: cache {meta.get(key)}, split {split.name!r} {getattr(split, key)}")
  if problems:
    return problems
  rows = row_fingerprints(split) if rows is None else rows
  cached = np.load(os.path.join(final, "rows.npy"))
  order = _rows_of(final, split)
  changed = np.flatnonzero(cached[order] != rows)
  if len(changed):
    names = np.asarray(split.filename)[changed[:3]].tolist()
    problems.append(f"{len(changed)} mixture(s) of split {split.name!r} have other metadata "
                    f"than when cached (other files, gains or room), e.g. {names}")
  return problems


def _rows_of(final: str, split) -> np.ndarray:
  """Cache row of every mixture of `split`, in split order; missing ids are an error."""
  filenames = np.load(os.path.join(final, "filenames.npy"))
  row_of = {name: i for i, name in enumerate(filenames.tolist())}
  wanted = np.asarray(split.filename).tolist()
  missing = [f for f in wanted if f not in row_of]
  if missing:
    raise CacheMismatchError(f"{final} has no tokens for {len(missing)} of the {len(split)} "
                             f"mixtures of split {split.name!r}, e.g. mixture id(s) "
                             f"{missing[:3]}: run stage teacher_cache on this data")
  return np.asarray([row_of[f] for f in wanted], np.int64)


def cached_tokens(name: str, spec, split, workdir: Optional[str]) -> np.ndarray:
  """Teacher `name`'s cached tokens (N, bins, d_model) float16 of `split`, in split order
  (memory-mapped when the cache holds the split in order); the cache must match the configured
  teacher and every mixture."""
  folder = cache_folder(name, spec, workdir)
  final = split_folder(folder, split.name)
  if not os.path.exists(os.path.join(final, "metadata.json")):
    raise FileNotFoundError(f"{final} holds no cache of teacher {name!r} for split "
                            f"{split.name!r}: run stage teacher_cache first (teachers.{name}."
                            f"splits names the splits it caches)")
  problems = check(final, expected_fingerprint(name, spec), split)
  if problems:
    raise CacheMismatchError(f"{final} was not made for this run: " + "; ".join(problems)
                             + ". Re-run stage teacher_cache (delete the folder first)")
  tokens = np.load(os.path.join(final, "tokens.npy"), mmap_mode="r")
  order = _rows_of(final, split)
  if np.array_equal(order, np.arange(len(tokens))):
    return tokens
  return np.asarray(tokens[np.sort(order)])[np.argsort(np.argsort(order))]


def cache_folder(name: str, spec, workdir: Optional[str]) -> str:
  if spec.folder:
    return spec.folder
  if workdir is None:
    raise ValueError(f"teacher {name!r}: teachers.{name}.folder is empty and there is no "
                     f"workdir to put the cache in")
  return os.path.join(workdir, "teacher_caches", name)


def column_name(name: str) -> str:
  """The split column the cached tokens join as."""
  return f"teacher/{name}/{OUTPUT}"
