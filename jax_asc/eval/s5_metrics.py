"""Report 004's system metrics: CAPI-SDRi and the label accuracies of a tagger + separator
(the T4 baseline's `s5capi_metric.py` and `label_metric.py`; ../shared/reference/methods.md §8).

Per mixture: estimated labels and waveforms (K_e, T), reference labels and dry sources (K_r, T)
(channel 0 of each), the mixture's reference channel (T,). Labels are any hashable values
(class names or indices); `silence` marks an empty track and is ignored everywhere.

CAPI-SDRi of one mixture: over the classes c in (estimated ∪ reference labels) − {silence},
with E_c, R_c its estimates and references:
  - E_c empty: |R_c| zeros (misses); R_c empty: |E_c| zeros (false alarms);
  - else, of the assignments of TP = min(|E_c|, |R_c|) references (combinations) to as many
    estimates (permutations), the one with the highest mean SNR; its SNRi = SNR(est, ref) −
    SNR(mixture, ref) per pair, plus ||E_c| − |R_c|| zeros.
The mixture's score is the mean of those entries; a mixture with no class at all (silence
predicted for silence) is excluded; CAPI-SDRi is the mean over the scored mixtures.
Accuracies: `mixture` = % of mixtures whose estimated label multiset equals the reference's;
`source` = TP / (TP + FP + FN) % over the multisets, pooled over mixtures.
"""
from __future__ import annotations

import collections
import itertools
from typing import (Callable, Dict, Hashable, Iterable, Iterator, List, Optional, Sequence,
                    Tuple)

import numpy as np

SILENCE = "silence"


def snr_db(estimate: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """SNR (dB) over the last axis, ε = the dtype's eps on both sides, no mean removed
  (torchmetrics' `signal_noise_ratio`, which the T4 metric uses)."""
  estimate = np.asarray(estimate)
  reference = np.asarray(reference)
  dtype = np.result_type(estimate.dtype, reference.dtype, np.float32)
  eps = np.finfo(dtype).eps
  signal = np.sum(reference.astype(dtype) ** 2, axis=-1)
  noise = np.sum((reference.astype(dtype) - estimate.astype(dtype)) ** 2, axis=-1)
  return 10.0 * np.log10((signal + eps) / (noise + eps))


def _best_assignment(estimates: np.ndarray, references: np.ndarray,
                     mixture: np.ndarray) -> np.ndarray:
  """SNRi of the pairs of the highest-mean-SNR assignment of min(|E|, |R|) pairs, (TP,)."""
  pairs = min(len(estimates), len(references))
  best_snr, best_improvement = -np.inf, None
  for refs in itertools.combinations(range(len(references)), pairs):
    for ests in itertools.permutations(range(len(estimates)), pairs):
      snr = snr_db(estimates[list(ests)], references[list(refs)])
      if snr.mean() > best_snr:   # the first of equals, as the reference's argmax
        best_snr = snr.mean()
        best_improvement = snr - snr_db(mixture[None], references[list(refs)])
  return best_improvement


def capi_sdri_of_mixture(estimated_labels: Sequence[Hashable], estimates: np.ndarray,
                         reference_labels: Sequence[Hashable], references: np.ndarray,
                         mixture: np.ndarray, silence: Hashable = SILENCE) -> Optional[float]:
  """The mixture's CAPI-SDRi (dB), None when neither side names a class (excluded).

  estimates (K_e, T) in the order of `estimated_labels`; references (K_r, T) likewise;
  mixture (T,) the reference channel."""
  estimates, references = np.asarray(estimates), np.asarray(references)
  for what, array in (("estimates", estimates), ("references", references),
                      ("mixture", np.asarray(mixture))):
    if not np.all(np.isfinite(array)):
      raise ValueError(f"{what} hold values that are not finite (NaN or ±inf)")
  if len(estimated_labels) != len(estimates) or len(reference_labels) != len(references):
    raise ValueError(f"{len(estimated_labels)} estimated labels for {len(estimates)} estimates, "
                     f"{len(reference_labels)} reference labels for {len(references)} "
                     f"references: expected one label per waveform")
  classes = (set(estimated_labels) | set(reference_labels)) - {silence}
  if not classes:
    return None
  entries: List[np.ndarray] = []
  for c in sorted(classes, key=str):
    mine = estimates[[i for i, label in enumerate(estimated_labels) if label == c]]
    theirs = references[[i for i, label in enumerate(reference_labels) if label == c]]
    if len(mine) and len(theirs):
      entries.append(_best_assignment(mine, theirs, np.asarray(mixture)))
    entries.append(np.zeros(abs(len(mine) - len(theirs))))
  return float(np.concatenate(entries).mean())


def capi_sdri(mixtures: Iterable[Tuple]) -> Dict[str, float]:
  """{capi_sdri: dB over the scored mixtures, scored, excluded} of (estimated_labels, estimates,
  reference_labels, references, mixture[, silence]) tuples."""
  scores = [capi_sdri_of_mixture(*m) for m in mixtures]
  scored = [s for s in scores if s is not None]
  if not scored:
    raise ValueError(f"no mixture names a class (all {len(scores)} silent): CAPI-SDRi is "
                     f"undefined")
  return {"capi_sdri": float(np.mean(scored)), "scored": len(scored),
          "excluded": len(scores) - len(scored)}


def split_mixtures(split, estimated_labels: np.ndarray, estimates_of: Callable, chunk: int
                   ) -> Iterator[Tuple]:
  """`capi_sdri`'s tuples for every mixture of an S5 split, read `chunk` rows at a time: the
  rows' estimates (`estimates_of(rows)` → (n, K, S), in the order of `estimated_labels` (N, K)),
  the split's reference labels and dry `sources`, its mixtures' reference channel and silence
  (the last class). A generator: only one chunk's audio is held at once."""
  reference = np.asarray(split["labels"])
  silence = len(split.classes)
  for start in range(0, len(split), chunk):
    rows = np.arange(start, min(start + chunk, len(split)))
    estimates = np.asarray(estimates_of(rows))
    mixture = split.audio("waveform", rows)[:, 0]
    sources = split.audio("sources", rows)
    for k, i in enumerate(rows):
      yield (np.asarray(estimated_labels[i]).tolist(), estimates[k], reference[i].tolist(),
             sources[k], mixture[k], silence)


def label_counts(estimated_labels: Sequence[Hashable], reference_labels: Sequence[Hashable],
                 silence: Hashable = SILENCE) -> Dict[str, int]:
  """{tp, fp, fn, exact} of one mixture's label multisets (silence ignored)."""
  mine = collections.Counter(l for l in estimated_labels if l != silence)
  theirs = collections.Counter(l for l in reference_labels if l != silence)
  tp = sum((mine & theirs).values())
  return {"tp": tp, "fp": sum(mine.values()) - tp, "fn": sum(theirs.values()) - tp,
          "exact": int(mine == theirs)}


def label_accuracies(pairs: Iterable[Tuple[Sequence[Hashable], Sequence[Hashable]]],
                     silence: Hashable = SILENCE) -> Dict[str, float]:
  """{accuracy_mixture, accuracy_source} in % of (estimated_labels, reference_labels) pairs
  (accuracy_source is NaN when no mixture names a class on either side)."""
  counts = [label_counts(e, r, silence) for e, r in pairs]
  if not counts:
    raise ValueError("no mixtures to score")
  tp, fp, fn = (sum(c[k] for c in counts) for k in ("tp", "fp", "fn"))
  return {"accuracy_mixture": 100.0 * sum(c["exact"] for c in counts) / len(counts),
          "accuracy_source": 100.0 * tp / (tp + fp + fn) if tp + fp + fn else float("nan")}
