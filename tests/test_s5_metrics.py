"""Report 004's separator loss (class-aware PIT −SNR) and system metrics (CAPI-SDRi, label
accuracies): hand-computed cases and independent brute-force implementations."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_asc.eval import s5_metrics
from jax_asc.losses import pit, separation

T = 400


def _tone(cycles, amplitude=1.0):
  """Sinusoids of whole cycles over T samples are orthogonal: Σ s_a s_b = 0, Σ s² = T/2."""
  return amplitude * np.sin(2 * np.pi * cycles * np.arange(T) / T)


def _snr(estimate, reference):   # the formula, written out
  eps = np.finfo(np.float64).eps
  return 10 * np.log10((np.sum(reference ** 2) + eps) / (np.sum((reference - estimate) ** 2) + eps))


def test_snr_known_values_numpy_and_jax():
  reference = _tone(3)
  estimate = reference + _tone(5, 0.1)            # noise energy 1 % of the signal's
  assert s5_metrics.snr_db(estimate, reference) == pytest.approx(20.0, abs=1e-6)
  assert float(separation.snr_db(jnp.asarray(estimate), jnp.asarray(reference))) == \
      pytest.approx(20.0, abs=1e-4)
  # not scale-invariant: a half-level estimate is at 6.02 dB
  assert s5_metrics.snr_db(0.5 * reference, reference) == pytest.approx(10 * np.log10(4), abs=1e-6)


def test_capi_sdri_hand_computed_mixtures():
  dog, cat, bird = _tone(3), _tone(5, 2.0), _tone(7)
  mixture = dog + cat
  dog_estimate = dog + 0.1 * cat   # SNR 10·log10(25) dB; the mixture's SNR to dog: 10·log10(1/4)
  improvement = 10 * np.log10(25) - 10 * np.log10(0.25)   # = 20 dB
  # a hit and a miss
  score = s5_metrics.capi_sdri_of_mixture(["dog", "silence"], [dog_estimate, 0 * dog],
                                          ["dog", "cat"], [dog, cat], mixture)
  assert score == pytest.approx(improvement / 2, abs=1e-6)
  # a hit and a false alarm
  score = s5_metrics.capi_sdri_of_mixture(["dog", "bird"], [dog_estimate, bird],
                                          ["dog", "silence"], [dog, 0 * dog], mixture)
  assert score == pytest.approx(improvement / 2, abs=1e-6)
  # silence for silence: excluded from the mean
  silent = (["silence"], [0 * dog], ["silence"], [0 * dog], mixture)
  summary = s5_metrics.capi_sdri([silent, (["dog"], [dog_estimate], ["dog"], [dog], mixture)])
  assert summary == {"capi_sdri": pytest.approx(improvement, abs=1e-6), "scored": 1,
                     "excluded": 1}
  with pytest.raises(ValueError, match="all 1 silent"):
    s5_metrics.capi_sdri([silent])
  with pytest.raises(ValueError, match="one label per waveform"):
    s5_metrics.capi_sdri_of_mixture(["dog"], [dog, cat], ["dog"], [dog], mixture)


def test_capi_sdri_picks_the_assignment_by_snr_not_by_improvement():
  # Two dog references, one dog estimate: by SNR it matches the loud one (5.05 vs −0.97 dB);
  # its improvement (−0.97 dB) is lower than the quiet one's (5.05 dB) would be.
  loud, quiet = _tone(3), _tone(5, 0.5)
  estimate = 0.5 * _tone(3) + 0.5 * _tone(5, 0.5)
  score = s5_metrics.capi_sdri_of_mixture(["dog"], [estimate], ["dog", "dog"], [loud, quiet],
                                          loud + quiet)
  assert score == pytest.approx(10 * np.log10(0.8) / 2, abs=1e-6)   # (−0.969 + a miss's 0) / 2


def test_capi_sdri_keeps_the_first_of_equally_good_assignments():
  # A silent estimate is at 0 dB against every reference: the first reference (in label order)
  # is matched, as the reference's argmax keeps the first of equal means.
  first, second = _tone(3), _tone(5, 0.5)
  mixture = first + second
  score = s5_metrics.capi_sdri_of_mixture(["dog"], [0 * first], ["dog", "dog"], [first, second],
                                          mixture)
  assert score == pytest.approx(-_snr(mixture, first) / 2, abs=1e-6)
  assert -_snr(mixture, first) != pytest.approx(-_snr(mixture, second), abs=0.1)


def test_capi_sdri_names_broken_waveforms():
  dog = _tone(3)
  with pytest.raises(ValueError, match="not finite"):
    s5_metrics.capi_sdri_of_mixture(["dog"], [dog * np.nan], ["dog"], [dog], dog)


def _capi_brute_force(est_labels, estimates, ref_labels, references, mixture):
  """Every injective matching of the larger side onto the smaller, per class, by mean SNR."""
  classes = (set(est_labels) | set(ref_labels)) - {"silence"}
  if not classes:
    return None
  entries = []
  for c in classes:
    e = [x for l, x in zip(est_labels, estimates) if l == c]
    r = [x for l, x in zip(ref_labels, references) if l == c]
    entries += [0.0] * abs(len(e) - len(r))
    if not e or not r:
      continue
    if len(e) >= len(r):
      matchings = [list(zip(p, r)) for p in itertools.permutations(e, len(r))]
    else:
      matchings = [list(zip(e, p)) for p in itertools.permutations(r, len(e))]
    best = max(matchings, key=lambda m: np.mean([_snr(x, y) for x, y in m]))
    entries += [_snr(x, y) - _snr(mixture, y) for x, y in best]
  return float(np.mean(entries))


def test_capi_sdri_equals_a_brute_force_implementation_on_random_mixtures():
  rng = np.random.default_rng(0)
  names = ["dog", "cat", "bird", "silence"]
  for _ in range(40):
    k_ref, k_est = rng.integers(1, 4, size=2)
    ref_labels = list(rng.choice(names, k_ref, p=[0.4, 0.25, 0.2, 0.15]))
    est_labels = list(rng.choice(names, k_est, p=[0.4, 0.25, 0.2, 0.15]))
    references = rng.standard_normal((k_ref, 64)) * rng.uniform(0.2, 2, (k_ref, 1))
    mixture = references.sum(axis=0) + 0.3 * rng.standard_normal(64)
    estimates = np.stack([references[rng.integers(k_ref)] + rng.uniform(0.1, 1)
                          * rng.standard_normal(64) for _ in range(k_est)])
    expected = _capi_brute_force(est_labels, estimates, ref_labels, references, mixture)
    got = s5_metrics.capi_sdri_of_mixture(est_labels, estimates, ref_labels, references, mixture)
    if expected is None:
      assert got is None
    else:
      assert got == pytest.approx(expected, abs=1e-9)


def test_label_accuracies_over_multisets():
  assert s5_metrics.label_counts(["dog", "dog", "cat"], ["dog", "cat", "silence"]) == \
      {"tp": 2, "fp": 1, "fn": 0, "exact": 0}
  assert s5_metrics.label_counts([3, 18, 18], [3], silence=18)["exact"] == 1
  scores = s5_metrics.label_accuracies([(["dog", "dog", "cat"], ["dog", "cat", "silence"]),
                                        (["bird", "silence"], ["bird"])])
  assert scores == {"accuracy_mixture": 50.0, "accuracy_source": 75.0}
  assert np.isnan(s5_metrics.label_accuracies([(["silence"], ["silence"])])["accuracy_source"])


SILENCE = 4


def _pit_brute_force(estimates, references, labels):
  """min over the permutations that match only same-label tracks (silence to itself, cost 0)
  of the mean −SNR, per example."""
  out = []
  for est, ref, lab in zip(estimates, references, labels):
    best = np.inf
    for perm in itertools.permutations(range(len(lab))):
      costs = []
      for i, j in enumerate(perm):
        if lab[i] == SILENCE:
          costs.append(0.0 if i == j else np.inf)
        elif lab[j] == lab[i]:
          costs.append(-np.mean([_snr(e, r) for e, r in zip(np.atleast_2d(est[j]),
                                                             np.atleast_2d(ref[i]))]))
        else:
          costs.append(np.inf)
      best = min(best, np.mean(costs))
    out.append(best)
  return np.array(out)


@pytest.mark.parametrize("channels", [None, 2])
def test_class_aware_pit_snr_equals_a_brute_force_search(channels):
  rng = np.random.default_rng(1)
  labels = np.array([[0, 0, 1], [2, SILENCE, SILENCE], [3, 3, 3], [1, 0, SILENCE],
                     [SILENCE, SILENCE, SILENCE], [2, 1, 2]], np.int32)
  shape = (len(labels), 3) + ((channels,) if channels else ()) + (48,)
  references = rng.standard_normal(shape).astype(np.float32)
  estimates = (references[:, [1, 0, 2]] + 0.5 * rng.standard_normal(shape)).astype(np.float32)
  loss, best = jax.jit(lambda e, r, l: separation.class_aware_pit_snr(e, r, l, silence=SILENCE))(
      estimates, references, labels)
  per_example = _pit_brute_force(estimates.astype(np.float64), references.astype(np.float64),
                                 labels)
  assert np.all(np.isfinite(per_example))
  assert float(loss) == pytest.approx(per_example.mean(), abs=1e-3)
  # the chosen permutation gives that minimum and is a valid one
  perms = pit.permutations(3)[np.asarray(best)]
  costs = separation.class_aware_pairwise_cost(estimates, references, labels, SILENCE)
  chosen = np.take_along_axis(np.asarray(costs), perms[:, :, None], axis=2)[..., 0].mean(axis=1)
  np.testing.assert_allclose(chosen, per_example, atol=1e-3)
  assert np.all(chosen < separation.INVALID)
  # a silent example costs nothing; swapping two same-label estimates changes nothing
  assert per_example[4] == 0.0
  swapped = estimates.copy()
  swapped[2] = estimates[2, [2, 0, 1]]
  again, _ = separation.class_aware_pit_snr(swapped, references, labels, silence=SILENCE)
  assert float(again) == pytest.approx(float(loss), abs=1e-5)
  # masked examples are left out of the mean
  mask = np.array([1, 1, 0, 0, 0, 0], bool)
  masked, _ = separation.class_aware_pit_snr(estimates, references, labels, silence=SILENCE,
                                             mask=mask)
  assert float(masked) == pytest.approx(per_example[:2].mean(), abs=1e-3)


def test_class_aware_pit_snr_gradient_reaches_only_matched_estimates():
  rng = np.random.default_rng(2)
  labels = np.array([[0, 1, SILENCE]], np.int32)
  references = rng.standard_normal((1, 3, 32)).astype(np.float32)
  estimates = rng.standard_normal((1, 3, 32)).astype(np.float32)
  grad = jax.grad(lambda e: separation.class_aware_pit_snr(e, references, labels,
                                                           silence=SILENCE)[0])(estimates)
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad))
  assert np.abs(grad[0, :2]).sum() > 0 and np.abs(grad[0, 2]).sum() == 0   # silence: no loss


def test_snr_matches_torchmetrics():
  """The SNR of the T4 baseline is torchmetrics' `signal_noise_ratio` (eps on both sides, no
  zero-mean): ours, NumPy and JAX, against it on random and near-silent signals."""
  torch = pytest.importorskip("torch")
  audio = pytest.importorskip("torchmetrics.functional.audio")
  rng = np.random.default_rng(4)
  reference = rng.normal(size=(5, T)).astype(np.float32)
  estimate = (reference + rng.normal(0, 0.3, (5, T))).astype(np.float32)
  estimate[1] = 0.0                                    # a silent estimate
  reference[2] = 1e-4 * reference[2]                   # a near-silent reference
  theirs = audio.signal_noise_ratio(torch.from_numpy(estimate), torch.from_numpy(reference),
                                    zero_mean=False).numpy()
  np.testing.assert_allclose(s5_metrics.snr_db(estimate, reference), theirs, atol=1e-4)
  np.testing.assert_allclose(np.asarray(separation.snr_db(jnp.asarray(estimate),
                                                          jnp.asarray(reference))),
                             theirs, atol=1e-4)


def test_split_mixtures_reads_a_chunk_at_a_time():
  from jax_asc.data.dataset import Split
  rng = np.random.default_rng(3)
  n, samples = 5, 400
  labels = np.array([[0, 1, 2], [1, 2, 2], [2, 2, 2], [0, 0, 2], [1, 0, 2]], np.int32)
  columns = dict(waveform=rng.standard_normal((n, 4, samples)).astype(np.float32),
                 sources=rng.standard_normal((n, 3, samples)).astype(np.float32),
                 labels=labels, filename=np.array([f"m{i}" for i in range(n)]),
                 index=np.arange(n, dtype=np.int32))
  split = Split(name="test", columns=columns, classes=("a", "b"), devices=(),
                sample_rate=32000)
  estimates = rng.standard_normal((n, 3, samples)).astype(np.float32)
  guesses = labels[::-1].copy()
  asked = []

  def estimates_of(rows):
    asked.append(rows.tolist())
    return estimates[rows]
  got = list(s5_metrics.split_mixtures(split, guesses, estimates_of, chunk=2))
  assert asked == [[0, 1], [2, 3], [4]]
  for i, row in enumerate(got):
    assert row[0] == guesses[i].tolist() and row[2] == labels[i].tolist() and row[5] == 2
    np.testing.assert_array_equal(row[1], estimates[i])
    np.testing.assert_array_equal(row[3], columns["sources"][i])
    np.testing.assert_array_equal(row[4], columns["waveform"][i, 0])
  expected = s5_metrics.capi_sdri(
      [(guesses[i].tolist(), estimates[i], labels[i].tolist(), columns["sources"][i],
        columns["waveform"][i, 0], 2) for i in range(n)])
  assert s5_metrics.capi_sdri(iter(got)) == expected
