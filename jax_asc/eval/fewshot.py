"""Few-shot transfer and retrieval of clip embeddings (report 003, section 4, tables 1-3).

Pure NumPy and scikit-learn: embeddings in, numbers out (the stage `fewshot` embeds the data).

  sample_episodes(labels, shots, episodes, seed)   (E, C·K) rows of a support pool: K examples
                                   of each of its C classes per episode, seeded per episode
  few_shot(embeddings, labels, …)  a logistic regression fitted on each episode's K-shot
                                   embeddings, scored on the held-out set (a given test part, or
                                   the pool's examples outside the episode's support): accuracy
                                   mean ± 95 % interval over the episodes, per-class accuracy and
                                   its mean over seen and over unseen classes (table 3)
  mean_interval(values)            (mean, half-width of the two-sided Student-t interval)
  average_precisions(emb, labels)  (N,) AP of each example querying all others by cosine
                                   similarity; retrieval_map: their mean (table 1's mAP)

Labels are class indices; −1 (unlabelled) rows are ignored everywhere.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

CONFIDENCE = 0.95


def _class_name(label: int, class_names: Optional[Sequence[str]]) -> str:
  if class_names is not None and 0 <= label < len(class_names):
    return f"{class_names[label]!r} (class {label})"
  return f"class {label}"


def sample_episodes(labels: np.ndarray, shots: int, episodes: int, seed: int, *,
                    class_names: Optional[Sequence[str]] = None,
                    dataset: str = "the dataset") -> np.ndarray:
  """Rows of the support pool making up each episode's K-shot training set.

  Args:
    labels: (N,) int class of each pool example (−1: unlabelled, never drawn).
    shots: K, examples per class; episodes: E; seed: the draw's seed.
    class_names, dataset: only for the error message.
  Returns:
    (E, C·K) int64 row indices into `labels`, C = the classes present in the pool (sorted),
    class by class, each class's K rows drawn without replacement. Episode e depends only on
    (seed, K, e): the first E' episodes of a longer run are the same.
  Raises:
    ValueError naming the dataset and class when a class has fewer than K examples.
  """
  labels = np.asarray(labels)
  if int(shots) < 1 or int(episodes) < 1:
    raise ValueError(f"shots and episodes must be ≥ 1, got shots={shots}, episodes={episodes}")
  classes = np.unique(labels[labels >= 0])
  if len(classes) == 0:
    raise ValueError(f"{dataset}: the support pool has no labelled examples")
  members = [np.flatnonzero(labels == c) for c in classes]
  for c, rows in zip(classes, members):
    if len(rows) < shots:
      raise ValueError(f"{dataset}: {_class_name(int(c), class_names)} has {len(rows)} "
                       f"example(s) in the support pool, fewer than the {shots} shots asked for")
  out = np.empty((int(episodes), len(classes) * int(shots)), np.int64)
  for e in range(int(episodes)):
    rng = np.random.default_rng([int(seed), int(shots), e])
    out[e] = np.concatenate([rng.choice(rows, int(shots), replace=False) for rows in members])
  return out


def mean_interval(values, confidence: float = CONFIDENCE) -> Tuple[float, float]:
  """(mean, half-width) of the two-sided Student-t confidence interval of the mean of
  `values` (NaNs left out); the half-width is NaN with fewer than two values."""
  from scipy import stats
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  if len(values) == 0:
    return float("nan"), float("nan")
  mean = float(values.mean())
  if len(values) < 2:
    return mean, float("nan")
  sem = float(values.std(ddof=1)) / np.sqrt(len(values))
  return mean, float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * sem)


def standardized(support: np.ndarray, queries: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Support and queries z-scored per dimension with the support's mean and standard deviation
  (a dimension constant over the support is only centred)."""
  support, queries = np.asarray(support, np.float64), np.asarray(queries, np.float64)
  mean, std = support.mean(axis=0), support.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return (support - mean) / std, (queries - mean) / std


def fit_predict(support: np.ndarray, support_labels: np.ndarray, queries: np.ndarray,
                C: float = 1.0, max_iter: int = 1000, standardize: bool = False
                ) -> Tuple[np.ndarray, bool]:
  """(predicted class of each query (Q,), whether lbfgs converged) of scikit-learn's
  LogisticRegression (L2, `C`) fitted on (S, D) support embeddings; `standardize`: both first
  z-scored with the support's statistics (the L2 penalty then does not depend on the
  embedding's scale, which a model without a final norm leaves arbitrary)."""
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.linear_model import LogisticRegression
  if standardize:
    support, queries = standardized(support, queries)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", ConvergenceWarning)
    model = LogisticRegression(C=C, max_iter=max_iter)
    model.fit(np.asarray(support, np.float64), np.asarray(support_labels))
  converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
  return model.predict(np.asarray(queries, np.float64)), converged


def _summary(values) -> Dict[str, float]:
  mean, half = mean_interval(values)
  return {"mean": mean, "ci95": half, "std": float(np.nanstd(values, ddof=1))
          if np.sum(~np.isnan(values)) > 1 else float("nan")}


def few_shot(embeddings: np.ndarray, labels: np.ndarray, *, shots: int, episodes: int,
             seed: int, test_embeddings: Optional[np.ndarray] = None,
             test_labels: Optional[np.ndarray] = None, seen: Optional[Sequence[int]] = None,
             class_names: Optional[Sequence[str]] = None, dataset: str = "the dataset",
             C: float = 1.0, standardize: bool = False) -> Dict:
  """K-shot logistic-regression transfer of embeddings, repeated over seeded episodes.

  Args:
    embeddings: (N, D) float support pool; labels: (N,) int (−1 rows never used).
    shots, episodes, seed: K, E and the seed of `sample_episodes`.
    test_embeddings, test_labels: (M, D), (M,) the held-out set; None: each episode is scored
      on the pool's labelled examples outside its support ("the rest").
    seen: class indices seen in the encoder's training (None: no seen/unseen breakdown); the
      others of the pool are unseen.
    class_names: names of the class indices (keys of `per_class`); dataset: for errors.
    C: inverse L2 strength of the logistic regression (scikit-learn's default 1.0).
    standardize: z-score each episode's support and held-out embeddings with the support's
      statistics before fitting (`fit_predict`).
  Returns:
    {"shots", "episodes", "seed", "classes": C, "support": C·K, "test": held-out examples (mean
     over episodes), "accuracy": {"mean", "ci95", "std"} over episodes (fraction of held-out
     examples right), "per_class": {name: mean over episodes of that class's accuracy},
     "seen" / "unseen": {"classes": count, "mean", "ci95", "std"} of the per-episode mean
     class accuracy over those classes (absent without `seen`), "not_converged": episodes whose
     lbfgs stopped at its iteration limit}.
  """
  embeddings = np.asarray(embeddings)
  labels = np.asarray(labels)
  if embeddings.ndim != 2 or len(embeddings) != len(labels):
    raise ValueError(f"{dataset}: embeddings must be (N, D) with N = len(labels) = "
                     f"{len(labels)}, got {embeddings.shape}")
  rows = sample_episodes(labels, shots, episodes, seed, class_names=class_names,
                         dataset=dataset)
  classes = np.unique(labels[labels >= 0])
  if (test_embeddings is None) != (test_labels is None):
    raise ValueError("give both test_embeddings and test_labels, or neither")
  if test_labels is not None:
    test_embeddings, test_labels = np.asarray(test_embeddings), np.asarray(test_labels)
    keep = test_labels >= 0
    test_embeddings, test_labels = test_embeddings[keep], test_labels[keep]
    extra = sorted(set(np.unique(test_labels).tolist()) - set(classes.tolist()))
    if extra:
      raise ValueError(f"{dataset}: the test part has {_class_name(extra[0], class_names)}, "
                       f"which the support pool lacks ({len(extra)} such class(es))")
    if len(test_labels) == 0:
      raise ValueError(f"{dataset}: the test part has no labelled examples")
  names = [class_names[c] if class_names is not None else str(c) for c in classes]
  seen_set = None if seen is None else set(int(c) for c in seen)
  accuracy = np.empty(len(rows))
  per_class = np.full((len(rows), len(classes)), np.nan)
  tested = np.empty(len(rows))
  not_converged = 0
  labelled = np.flatnonzero(labels >= 0)
  for e, support in enumerate(rows):
    if test_labels is None:
      rest = np.setdiff1d(labelled, support, assume_unique=True)
      if len(rest) == 0:
        raise ValueError(f"{dataset}: {shots} shots leave no example of the pool to test on")
      queries, truth = embeddings[rest], labels[rest]
    else:
      queries, truth = test_embeddings, test_labels
    predicted, converged = fit_predict(embeddings[support], labels[support], queries, C=C,
                                       standardize=standardize)
    not_converged += not converged
    correct = predicted == truth
    accuracy[e], tested[e] = correct.mean(), len(truth)
    for j, c in enumerate(classes):
      mine = truth == c
      if mine.any():
        per_class[e, j] = correct[mine].mean()
  result = {"shots": int(shots), "episodes": int(episodes), "seed": int(seed),
            "classes": len(classes), "support": int(rows.shape[1]),
            "test": float(tested.mean()), "accuracy": _summary(accuracy),
            "per_class": {n: float(np.nanmean(per_class[:, j])) if np.any(
                ~np.isnan(per_class[:, j])) else float("nan") for j, n in enumerate(names)},
            "not_converged": int(not_converged)}
  if seen_set is not None:
    for group, wanted in (("seen", True), ("unseen", False)):
      columns = [j for j, c in enumerate(classes) if (int(c) in seen_set) == wanted]
      if columns:
        with warnings.catch_warnings():
          warnings.simplefilter("ignore", RuntimeWarning)   # an episode testing none of them
          means = np.nanmean(per_class[:, columns], axis=1)
        result[group] = dict(classes=len(columns), **_summary(means))
      else:
        result[group] = {"classes": 0, "mean": float("nan"), "ci95": float("nan"),
                         "std": float("nan")}
  return result


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def average_precisions(embeddings: np.ndarray, labels: np.ndarray,
                       chunk: int = 1024) -> np.ndarray:
  """Retrieval AP of every example querying all the others by cosine similarity.

  Args:
    embeddings: (N, D); labels: (N,) int (−1 rows neither query nor are retrieved).
    chunk: queries ranked at once (memory ~ chunk · N).
  Returns:
    (N,) float64: for a labelled query with at least one other example of its class, the mean
    over those examples of the precision at their rank (ranks by decreasing similarity, ties in
    row order); NaN for the others.
  """
  labels = np.asarray(labels)
  out = np.full(len(labels), np.nan)
  rows = np.flatnonzero(labels >= 0)
  if len(rows) < 2:
    return out
  x, y = _unit(np.asarray(embeddings)[rows]), labels[rows]
  n = len(rows)
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    sim = x[start:stop] @ x.T
    sim[np.arange(stop - start), np.arange(start, stop)] = -np.inf    # itself: ranked last
    order = np.argsort(-sim, axis=1, kind="stable")[:, :n - 1]
    relevant = y[order] == y[start:stop, None]
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, n)[None, :]
    count = relevant.sum(axis=1)
    ap = np.where(relevant, precision, 0.0).sum(axis=1) / np.maximum(count, 1)
    out[rows[start:stop]] = np.where(count > 0, ap, np.nan)
  return out


def retrieval_map(embeddings: np.ndarray, labels: np.ndarray) -> float:
  """Mean over queries of `average_precisions` (queries without a same-class item left out)."""
  ap = average_precisions(embeddings, labels)
  if np.all(np.isnan(ap)):
    raise ValueError("retrieval mAP needs a class with at least two labelled examples")
  return float(np.nanmean(ap))
