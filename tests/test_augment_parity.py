"""The stochastic augmentations compared as distributions with their references.

Each sampler of `jax_asc.audio.augment` (as `frontends.log_mel` and `stages.tasks` use them) is
run on many draws and compared with the exact distribution the reference implies
(../shared/reference/models_and_frontends.md §4–5) and, where torch is installed, with draws
of the reference itself: torchaudio's FrequencyMasking / TimeMasking, and the d23 Freq-MixStyle,
mixup, roll and corner-jitter formulas written out in torch below from the facts file.

Seeds are fixed, so every test is deterministic. The thresholds (`P_MIN`, `Z_MAX`) hold for any
seed with high probability, and each `test_*_checks_reject_*` test shows that the same checks
fail on the plausible bugs named there, so a pass means something.
"""
import functools

import numpy as np
import pytest
import scipy.signal
import scipy.stats

import jax
import jax.numpy as jnp

from jax_asc.audio import augment, frontends
from jax_asc.losses import classification

P_MIN = 1e-4       # smallest accepted p-value (chi-square goodness of fit / homogeneity, KS)
Z_MAX = 4.5        # largest accepted |z| of one proportion, mean or correlation
Z_PROFILE = 5.0    # per-bin masking probabilities: up to 256 bins tested at once
ATOM = 1e-5        # MixStyle: a diagonal weight above 1 − ATOM reads as "left unchanged"


def _torch():
  return pytest.importorskip("torch", reason="the PyTorch reference needs torch")


def _torchaudio():
  _torch()
  return pytest.importorskip("torchaudio", reason="the masking reference is torchaudio's")


# ----------------------------------------------------------------------------- statistics
def _pool(observed, expected, min_expected=5.0):
  """Merges the cells expected fewer than `min_expected` times into one (chi-square validity)."""
  small = expected < min_expected
  if not small.any():
    return observed, expected
  return (np.append(observed[~small], observed[small].sum()),
          np.append(expected[~small], expected[small].sum()))


def gof_p(counts, probs) -> float:
  """Chi-square goodness-of-fit p-value of a histogram against exact cell probabilities; 0 when
  a cell of probability 0 was observed."""
  counts = np.ravel(counts).astype(np.float64)
  probs = np.ravel(probs).astype(np.float64)
  if counts[probs == 0].sum() > 0:
    return 0.0
  keep = probs > 0
  observed, expected = _pool(counts[keep], counts.sum() * probs[keep] / probs[keep].sum())
  if len(observed) < 2:
    return 1.0                   # one possible cell, and every draw fell in it
  return float(scipy.stats.chisquare(observed, expected).pvalue)


def same_p(counts_a, counts_b) -> float:
  """Chi-square homogeneity p-value: are two histograms draws of one distribution?"""
  table = np.stack([np.ravel(counts_a), np.ravel(counts_b)]).astype(np.float64)
  table = table[:, table.sum(0) > 0]
  expected = table.sum(0) * table.sum(1).min() / table.sum()
  small = expected < 5
  if small.any():
    table = np.concatenate([table[:, ~small], table[:, small].sum(1, keepdims=True)], axis=1)
  return float(scipy.stats.chi2_contingency(table, correction=False).pvalue)


def z_prop(k, n, p) -> float:
  """z-score of k successes in n Bernoulli(p) trials."""
  return float((k - n * p) / np.sqrt(n * p * (1 - p)))


def z_corr(a, b) -> float:
  """Pearson correlation × √n: ~N(0, 1) for independent samples; inf (a failure, not a NaN
  that compares False) when a sample is constant."""
  if np.std(a) == 0 or np.std(b) == 0:
    return np.inf
  return float(np.corrcoef(a, b)[0, 1] * np.sqrt(len(a)))


def test_statistics_helpers_accept_their_null_and_reject_a_shift():
  rng = np.random.default_rng(0)
  probs = np.full(10, 0.1)
  fair = np.bincount(rng.integers(0, 10, 20000), minlength=10)
  biased = np.bincount(rng.integers(0, 9, 20000), minlength=10)
  assert gof_p(fair, probs) > P_MIN and gof_p(biased, probs) < P_MIN
  assert same_p(fair, np.bincount(rng.integers(0, 10, 5000), minlength=10)) > P_MIN
  assert same_p(fair, biased) < P_MIN
  assert gof_p([30, 1, 0], [0.5, 0.5, 0.0]) > 0 and gof_p([30, 0, 1], [0.5, 0.5, 0.0]) == 0.0


# ----------------------------------------------------------------------------- 1. masks
def mask_pmf(size: int, max_width: int) -> np.ndarray:
  """Exact P(width = k, start = j) of a torchaudio mask (W, size): w_f = U₁·W, width = ⌊w_f⌋,
  start = ⌊U₂·(size − w_f)⌋. Row 0 holds P(width 0) in column 0 (no band, no start).

  Given width k, c = size − w_f is uniform on (n − 1, n] with n = size − k; start j ≤ n − 2 has
  probability ∫dc/c = ln(n/(n−1)), and the end-aligned start n − 1 takes the rest."""
  pmf = np.zeros((max_width, size))
  pmf[0, 0] = 1.0 / max_width
  for k in range(1, max_width):
    n = size - k
    inner = np.log(n / (n - 1))
    pmf[k, :n - 1] = inner / max_width
    pmf[k, n - 1] = (1.0 - (n - 1) * inner) / max_width
  return pmf


def bands(masked: np.ndarray):
  """(width, start) of the one contiguous band in each row of masked (n, size); start 0 when
  the row has no band. Fails if a row holds anything but one contiguous band."""
  width = masked.sum(1)
  start = np.where(width > 0, masked.argmax(1), 0)
  pos = np.arange(masked.shape[1])
  band = (pos >= start[:, None]) & (pos < (start + width)[:, None])
  assert np.array_equal(masked, band), "a mask is not one contiguous band"
  return width, start


def _padded(pmf, rows):
  return np.concatenate([pmf, np.zeros((max(rows - pmf.shape[0], 0), pmf.shape[1]))])


def mask_failures(width, start, size: int, max_width: int, joint: bool = False) -> list:
  """Names of the checks that draws (width, start) fail against the exact torchaudio law:
  width: the width histogram (0 … W−1, uniform); start: the start histogram of the non-empty
  masks; end: how often a band takes the last start its width allows; profile: the
  per-bin masking probability; joint (optional, small sizes): the (width, start) histogram."""
  width, start = np.asarray(width), np.asarray(start)
  n = len(width)
  pmf = mask_pmf(size, max_width)
  rows = max(max_width, int(width.max()) + 1)
  padded = _padded(pmf, rows)
  fails = []
  if gof_p(np.bincount(width, minlength=rows), padded.sum(1)) < P_MIN:
    fails.append("width")
  some = width > 0
  if gof_p(np.bincount(start[some], minlength=size)[:size], pmf[1:].sum(0)) < P_MIN:
    fails.append("start")
  # The last start a width allows, size − k − 1: the band then ends one bin short of the edge
  # (⌊U₂·c⌋ < c ≤ size − k, so torchaudio never masks the last bin).
  p_end = sum(pmf[k, size - k - 1] for k in range(1, max_width))
  if abs(z_prop(np.sum(some & (start + width == size - 1)), n, p_end)) > Z_MAX:
    fails.append("end")
  # exact P(bin f is masked) = Σ_k Σ_{f−k < j ≤ f} P(k, j), from row-wise cumulative sums
  cum = np.concatenate([np.zeros((max_width, 1)), np.cumsum(pmf, axis=1)], axis=1)
  f = np.arange(size)
  profile = sum(cum[k, f + 1] - cum[k, np.maximum(f - k + 1, 0)] for k in range(1, max_width))
  diff = np.zeros(size + 1)
  np.add.at(diff, start[some], 1)
  np.add.at(diff, np.minimum(start[some] + width[some], size), -1)
  hits = np.cumsum(diff)[:size]
  never = profile <= 0
  z = (hits[~never] - n * profile[~never]) / np.sqrt(n * profile[~never] * (1 - profile[~never]))
  if hits[never].any() or np.abs(z).max() > Z_PROFILE:
    fails.append("profile")
  if joint:
    cells = np.zeros((rows, size))
    np.add.at(cells, (width, start), 1)
    if gof_p(cells, padded) < P_MIN:
      fails.append("joint")
  return fails


def pair_failures(width, start, size: int, max_width: int) -> list:
  """iid check on consecutive examples (2i, 2i+1) of one batch: how often their masks are
  identical (exactly Σ p² for independent masks, 1 for a shared one) and the width correlation."""
  pmf = mask_pmf(size, max_width)
  a, b = slice(0, len(width) - 1, 2), slice(1, len(width), 2)
  same = (width[a] == width[b]) & (start[a] == start[b])
  fails = []
  if abs(z_prop(same.sum(), len(same), np.sum(pmf ** 2))) > Z_MAX:
    fails.append("identical pairs")
  if abs(z_corr(width[a], width[b])) > Z_MAX:
    fails.append("width correlation")
  return fails


def numpy_bands(rng, n: int, size: int, max_width: int, bug: str | None = None):
  """torchaudio's mask law in numpy, or one plausible bug of it."""
  w_f = rng.random(n) * (max_width + 1 if bug == "width 0..W" else max_width)
  width = np.floor(w_f)
  room = {"start uses size − floor(width)": size - width,
          "start uses size": np.full(n, float(size))}.get(bug, size - w_f)
  start = np.floor(rng.random(n) * room)
  if bug == "start uses size":
    width = np.minimum(width, size - start)      # the band runs off the end
  if bug == "width 1..W":
    width = np.floor(w_f) + 1
    start = np.floor(rng.random(n) * (size - width + 1))
  start = np.where(width > 0, start, 0)
  if bug == "one mask per batch":
    width, start = np.repeat(width[::2], 2)[:n], np.repeat(start[::2], 2)[:n]
  return width.astype(int), start.astype(int)


MASK_CASES = {            # kind, size, W: the d23 student, the d23 PaSST teacher, a small case
    "d23_freq_256_48": ("frequency", 256, 48),
    "passt_time_100_20": ("time", 100, 20),
    "small_freq_32_20": ("frequency", 32, 20),
}
SHARED_CASES = {MASK_CASES["d23_freq_256_48"]}   # the d23 env's one-mask-per-batch law
N_IID = 40000     # masks per iid sample
N_SHARED = 3000   # batches per shared-mask sample (torch draws these one call at a time)


@pytest.mark.parametrize("case", ["d23_freq_256_48", "small_freq_32_20"])
def test_mask_checks_reject_plausible_bugs(case):
  """At the sample sizes used below, the law's own draws pass and each bug fails: widths
  0 … W or 1 … W, the start drawn from size − ⌊w_f⌋ (half the end-aligned masks, z ≈ 6–20) or
  from the whole axis, one mask shared by the batch."""
  _, size, w = MASK_CASES[case]
  joint = size <= 64
  rng = np.random.default_rng(1)
  assert mask_failures(*numpy_bands(rng, N_IID, size, w), size, w, joint) == []
  assert pair_failures(*numpy_bands(rng, N_IID, size, w), size, w) == []
  for bug in ("width 0..W", "width 1..W", "start uses size − floor(width)", "start uses size"):
    assert mask_failures(*numpy_bands(rng, N_IID, size, w, bug), size, w, joint), bug
  assert "identical pairs" in pair_failures(
      *numpy_bands(rng, N_IID, size, w, "one mask per batch"), size, w)


def _masked_rows(out: np.ndarray, kind: str) -> np.ndarray:
  """(..., size) masked flags of a masked all-ones input with one extra axis of length 2 (time
  for a frequency mask, and the reverse); a mask must cover that whole axis."""
  masked = out == 0
  spans = masked[..., 0] if kind == "frequency" else masked[..., 0, :]
  other = masked[..., 1] if kind == "frequency" else masked[..., 1, :]
  assert np.array_equal(spans, other), "a mask does not cover the whole other axis"
  return spans


@functools.lru_cache(maxsize=None)     # the torch test compares with the same draws
def _jax_masks(kind, size, w):
  """Our masks on all-ones inputs, one compiled call: (iid rows (N_IID, size), one mask per
  example; shared rows (N_SHARED, size) of N_SHARED batches drawn with iid=False, or None
  where the case has no shared sample). Every case checks that iid=False masks a batch of 64
  with one band."""
  fn = augment.frequency_mask if kind == "frequency" else augment.time_mask
  shape = (size, 2) if kind == "frequency" else (2, size)
  with_shared = (kind, size, w) in SHARED_CASES

  def draw(key, x_iid, x_one):
    k_iid, k_one, k_shared = jax.random.split(key, 3)
    iid = fn(k_iid, x_iid, w)
    one = fn(k_one, jnp.ones((64,) + shape), w, iid=False)
    shared = (jax.vmap(lambda k: fn(k, x_one, w, iid=False))(jax.random.split(k_shared, N_SHARED))
              if with_shared else None)
    return iid, one, shared
  iid, one, shared = jax.jit(draw)(jax.random.key(0), jnp.ones((N_IID,) + shape),
                                   jnp.ones((4,) + shape))
  one = _masked_rows(np.asarray(one), kind)
  assert (one == one[:1]).all(), "iid=False must share one mask across the batch"
  if shared is not None:
    shared = _masked_rows(np.asarray(shared), kind)              # (N_SHARED, 4, size)
    assert (shared == shared[:, :1]).all(), "iid=False must share one mask across the batch"
    shared = shared[:, 0]
  return _masked_rows(np.asarray(iid), kind), shared


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_jax_masks_follow_the_torchaudio_law(case):
  """Ours against the exact law: per example (iid, d24/25) and one per batch (d23 env)."""
  kind, size, w = MASK_CASES[case]
  iid, shared = _jax_masks(kind, size, w)
  width, start = bands(iid)
  assert mask_failures(width, start, size, w, joint=size <= 64) == []
  assert pair_failures(width, start, size, w) == []           # catches a mask shared by the batch
  if shared is not None:
    assert mask_failures(*bands(shared), size, w) == []


def _torch_masks(kind, size, w, iid):
  """torchaudio draws: iid_masks=True on (B, 1, F, T) as d24/25 pass it; the d23 reference env
  (torchaudio ≤ 2.0 on a 3-D (B, F, T) input) drew one mask per batch, which is
  `mask_along_axis` on the 3-D tensor."""
  torch = _torch()
  ta = _torchaudio()
  shape = (size, 2) if kind == "frequency" else (2, size)
  if iid:
    cls = ta.transforms.FrequencyMasking if kind == "frequency" else ta.transforms.TimeMasking
    out = cls(w, iid_masks=True)(torch.ones((N_IID, 1) + shape))[:, 0]
    return _masked_rows(out.numpy(), kind)
  axis = 1 if kind == "frequency" else 2
  out = np.stack([ta.functional.mask_along_axis(torch.ones((4,) + shape), w, 0.0, axis).numpy()
                  for _ in range(N_SHARED)])
  rows = _masked_rows(out, kind)
  assert (rows == rows[:, :1]).all()
  return rows[:, 0]


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_torchaudio_masks_follow_the_same_law_as_ours(case):
  """The exact law used above is torchaudio's (its draws pass the same checks), and our draws
  and torchaudio's are one distribution (homogeneity of width, start and, small case, joint)."""
  kind, size, w = MASK_CASES[case]
  torch = _torch()
  torch.manual_seed(0)
  ref_w, ref_s = bands(_torch_masks(kind, size, w, iid=True))
  assert mask_failures(ref_w, ref_s, size, w, joint=size <= 64) == []
  assert pair_failures(ref_w, ref_s, size, w) == []
  iid, shared = _jax_masks(kind, size, w)
  ours_w, ours_s = bands(iid)
  assert same_p(np.bincount(ours_w, minlength=w), np.bincount(ref_w, minlength=w)) > P_MIN
  assert same_p(np.bincount(ours_s[ours_w > 0], minlength=size),
                np.bincount(ref_s[ref_w > 0], minlength=size)) > P_MIN
  if size <= 64:
    joint = lambda a, b: np.bincount(a * size + b, minlength=w * size)
    assert same_p(joint(ours_w, ours_s), joint(ref_w, ref_s)) > P_MIN
  if shared is not None:
    shared_w, shared_s = bands(_torch_masks(kind, size, w, iid=False))
    assert mask_failures(shared_w, shared_s, size, w) == []
    ours_w, ours_s = bands(shared)
    assert same_p(np.bincount(ours_w, minlength=w), np.bincount(shared_w, minlength=w)) > P_MIN


def test_log_mel_draws_one_corner_jitter_per_batch_and_shares_masks_as_configured():
  """Through `frontends.log_mel` (d23 settings) on a batch of identical clips: with shared masks
  (the d23 env) the examples stay identical under fmax jitter + masks, so the jitter is one draw
  per batch; with iid masks they differ only where some example is masked. Catches a per-example
  jitter and an `iid_masks` flag that does not reach the masks."""
  clip = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
  y = jnp.asarray(np.tile(clip, (6, 1)))
  settings = frontends.DCASE23
  masked_value = (0.0 + settings.norm_shift) / settings.norm_scale   # the log-domain mask 0
  is_masked = lambda out: np.isclose(out, masked_value, rtol=0, atol=1e-6).all(axis=-1)
  def frontend(iid):
    aug = frontends.FrontendAugment(fmax_aug_range=1000, freq_mask=48, iid_masks=iid)
    return jax.jit(lambda k: frontends.log_mel(y, settings, key=k, aug=aug))
  shared = frontend(False)
  outs = [np.asarray(shared(jax.random.key(seed))) for seed in range(3)]
  for out in outs:
    assert np.array_equal(out, np.broadcast_to(out[:1], out.shape))
  assert not (np.array_equal(outs[0], outs[1]) and np.array_equal(outs[1], outs[2]))
  iid = np.asarray(frontend(True)(jax.random.key(0)))       # same key: same fmax draw as outs[0]
  rows = is_masked(iid)                                      # (B, F) masked bins
  assert len({r.tobytes() for r in rows}) > 1
  clear = ~rows.any(axis=0) & ~is_masked(outs[0][0])
  np.testing.assert_array_equal(iid[:, clear], outs[0][:, clear])


# ----------------------------------------------------------------------------- 2. Freq-MixStyle
def torch_mix_statistics(x, lam, perm, eps=1e-6, unbiased=True, detach=True, dims=(1, 3)):
  """The d23/d25 `helpers/utils.mixstyle` formula on x (B, 1, F, T), given λ (B,) and perm (B,):
  per (sample, frequency bin) mean and variance over time, unbiased; σ = √(var + eps); both
  detached; x̂·(λσ + (1−λ)σ[perm]) + λμ + (1−λ)μ[perm]. The flags write plausible bugs."""
  mu = x.mean(dim=dims, keepdim=True)
  var = x.var(dim=dims, keepdim=True, unbiased=unbiased)
  sig = (var + eps).sqrt()
  if detach:
    mu, sig = mu.detach(), sig.detach()
  lam = lam.view(-1, 1, 1, 1)
  return (x - mu) / sig * (lam * sig + (1 - lam) * sig[perm]) + lam * mu + (1 - lam) * mu[perm]


def torch_mixstyle(x, p, alpha, eps=1e-6):
  """d23/d25 `mixstyle(x, p, alpha, eps)`: one coin for the batch (`if rand > p: return x`),
  λ ~ Beta(α, α) per sample, perm = randperm(B)."""
  torch = _torch()
  if torch.rand(1).item() > p:
    return x
  lam = torch.distributions.Beta(alpha, alpha).sample((x.size(0),)).to(x.dtype)
  return torch_mix_statistics(x, lam, torch.randperm(x.size(0)), eps)


def _mixstyle_core_case():
  """Per-(sample, bin) scales from 3e-4 to 1, so the variances straddle eps = 1e-6 (where the
  variance convention and eps show: with all σ ≫ √eps a common factor on σ cancels)."""
  rng = np.random.default_rng(0)
  b, f, t = 6, 5, 8
  scale = rng.choice([3e-4, 1e-3, 3e-3, 1.0], size=(b, 1, f, 1))
  x = scale * (rng.standard_normal((b, 1, f, 1)) + rng.standard_normal((b, 1, f, t)))
  lam = np.array([0.1, 0.9, 0.5, 0.02, 0.7, 0.35])
  perm = np.array([3, 0, 2, 5, 1, 4])              # one fixed point, not an involution
  sig = np.sqrt(x.var(axis=3, ddof=1, keepdims=True) + 1e-6)
  lam4 = lam.reshape(-1, 1, 1, 1)
  mixed_sig = (lam4 * sig + (1 - lam4) * sig[perm])[:, 0]   # the scale of each output row
  return x, lam, perm, mixed_sig


def test_mix_statistics_equals_the_reference_formula_for_given_lambda_and_perm():
  """Deterministic core: equal to float32 precision (relative to each row's mixed σ, < 1e-4);
  a biased variance (÷T), no eps, eps 1e-5, statistics over (F, T), the inverse perm or 1 − λ
  all miss by ≥ 8e-2. Gradients flow through x̂ only (detached μ, σ), as in torch."""
  torch = _torch()
  x, lam, perm, mixed_sig = _mixstyle_core_case()
  xt, lt, pt = torch.tensor(x), torch.tensor(lam), torch.tensor(perm)
  ref = torch_mix_statistics(xt, lt, pt).numpy()[:, 0]
  ours_fn = lambda v: augment.mix_statistics(v, jnp.asarray(perm), jnp.asarray(lam, jnp.float32),
                                             axes=(2,))
  ours = np.asarray(ours_fn(jnp.asarray(x[:, 0], jnp.float32)))
  error = lambda out: np.max(np.abs(out - ref) / mixed_sig)
  assert error(ours) < 1e-4
  bugs = {"biased variance": dict(unbiased=False), "no eps": dict(eps=0.0),
          "eps 1e-5": dict(eps=1e-5), "over (F, T)": dict(dims=(1, 2, 3))}
  for name, kwargs in bugs.items():
    assert error(torch_mix_statistics(xt, lt, pt, **kwargs).numpy()[:, 0]) > 8e-2, name
  assert error(torch_mix_statistics(xt, lt, torch.argsort(pt)).numpy()[:, 0]) > 8e-2
  assert error(torch_mix_statistics(xt, 1 - lt, pt).numpy()[:, 0]) > 8e-2

  weights = np.random.default_rng(1).standard_normal(ref.shape)
  x1 = torch.tensor(x, requires_grad=True)
  (torch_mix_statistics(x1, lt, pt)[:, 0] * torch.tensor(weights)).sum().backward()
  grad = jax.grad(lambda v: jnp.sum(ours_fn(v) * weights))(jnp.asarray(x[:, 0], jnp.float32))
  scale = np.abs(x1.grad.numpy()[:, 0]).max(axis=2, keepdims=True)
  np.testing.assert_allclose(np.asarray(grad) / scale, x1.grad.numpy()[:, 0] / scale, atol=1e-4)
  x2 = torch.tensor(x, requires_grad=True)
  (torch_mix_statistics(x2, lt, pt, detach=False)[:, 0] * torch.tensor(weights)).sum().backward()
  assert np.max(np.abs(x2.grad.numpy() - x1.grad.numpy())[:, 0] / scale) > 1e-2


# The probe input reads λ and perm off the output: x[j, f, t] = [f = j] + z[t], with z of mean 0
# and unbiased variance 1, so every σ is equal and the time-mean of out[i, f] is
# λᵢ·[f = i] + (1 − λᵢ)·[f = perm(i)]: the diagonal gives λᵢ (1 at a fixed point), the other
# nonzero entry gives perm(i).
MIX_B = 8
_Z = np.array([-3.0, -1.0, 1.0, 3.0]) / np.std([-3.0, -1.0, 1.0, 3.0], ddof=1)
MIX_PROBE = (np.eye(MIX_B)[:, :, None] + _Z[None, None, :]).astype(np.float32)   # (B, F=B, T)
N_STYLE = 4000      # batches per sample (torch draws them one call at a time)
N_MIXUP = 4000


def mixstyle_observed(out):
  """(applied (K,), diagonal weights v (K, B), partners (K, B)) of outputs (K, B, B, T) of the
  probe; checks the output has the structure the formula implies."""
  applied = np.abs(out - MIX_PROBE).max(axis=(1, 2, 3)) > 1e-5
  means = out.mean(-1)
  idx = np.arange(MIX_B)
  v = means[:, idx, idx]
  off = means.copy()
  off[:, idx, idx] = -np.inf
  partner = np.where(off.max(-1) > 1e-5, off.argmax(-1), idx)
  expected = np.eye(MIX_B)[idx] * v[..., None] + np.eye(MIX_B)[partner] * (1 - v[..., None])
  np.testing.assert_allclose(means[applied], expected[applied], atol=2e-5)
  return applied, v, partner


def mixstyle_failures(applied, v, partner, p, alpha) -> list:
  """Checks of the reference law on the probe's observations (K batches of MIX_B):
  application rate = p (one coin per batch); in applied batches, the share of unchanged
  examples = P(fixed point of a uniform perm) + P(λ > 1 − ATOM); the other diagonal weights
  follow Beta(α, α) truncated at 1 − ATOM (KS), λ of examples 0 and 1 uncorrelated; their
  partners are distinct within a batch and uniform over the other examples."""
  fails = []
  if abs(z_prop(applied.sum(), len(applied), p)) > Z_MAX:
    fails.append("application rate")
  v, partner = v[applied], partner[applied]
  atom = v > 1 - ATOM
  beta = scipy.stats.beta(alpha, alpha)
  q = 1 / MIX_B + (1 - 1 / MIX_B) * beta.sf(1 - ATOM)
  if abs(z_prop(atom.sum(), atom.size, q)) > Z_MAX:
    fails.append("unchanged examples")
  top = beta.cdf(1 - ATOM)
  if scipy.stats.kstest(np.clip(v[~atom], 0, 1), lambda s: beta.cdf(s) / top).pvalue < P_MIN:
    fails.append("lambda law")
  both = ~atom[:, 0] & ~atom[:, 1]
  if abs(z_corr(v[both, 0], v[both, 1])) > Z_MAX:
    fails.append("lambda per example")
  # λ is independent of the perm, so the partners of the mixed examples are an unbiased view
  # of it: P(perm(i) = j | perm(i) ≠ i) = 1/(B − 1).
  seen = np.where(atom, -1 - np.arange(MIX_B), partner)     # unchanged examples: unique dummies
  if (np.sort(seen, axis=1)[:, 1:] == np.sort(seen, axis=1)[:, :-1]).any():
    fails.append("not a permutation")
  counts = np.zeros((MIX_B, MIX_B))
  rows = np.broadcast_to(np.arange(MIX_B), atom.shape)
  np.add.at(counts, (rows[~atom], partner[~atom]), 1)
  expected = counts.sum(1, keepdims=True) / (MIX_B - 1) * (1 - np.eye(MIX_B))
  off = ~np.eye(MIX_B, dtype=bool)
  stat = np.sum((counts[off] - expected[off]) ** 2 / expected[off])
  if np.trace(counts) > 0 or scipy.stats.chi2.sf(stat, MIX_B * (MIX_B - 2)) < P_MIN:
    fails.append("partner positions")
  return fails


def perm_failures(perms) -> list:
  """A uniform random permutation per row of perms (K, B): a bijection, 1 fixed point on
  average (variance 1), every position-to-position pair equally likely."""
  k, b = perms.shape
  if not (np.sort(perms, axis=1) == np.arange(b)).all():
    return ["not a permutation"]
  fails = []
  fixed = (perms == np.arange(b)).sum(1)
  if abs((fixed.mean() - 1.0) * np.sqrt(k)) > Z_MAX:
    fails.append("fixed points")
  counts = np.zeros((b, b))
  np.add.at(counts, (np.tile(np.arange(b), k), perms.ravel()), 1)
  if scipy.stats.chi2_contingency(counts).pvalue < P_MIN:
    fails.append("positions")
  return fails


def _simulated_mixstyle(rng, p, alpha, bug=None):
  """Observations (applied, v, partner) of the reference law, or of one plausible bug of it,
  drawn in numpy."""
  k, b = N_STYLE, MIX_B
  coin = rng.random((k, b) if bug == "one coin per example" else (k, 1)) < p
  lam = rng.beta(alpha, alpha, (k, 1) if bug == "one lambda per batch" else (k, b))
  if bug == "lambda = max(b, 1 − b)":
    lam = np.maximum(lam, 1 - lam)
  perms = {"perm = roll by 1": np.tile((np.arange(b) + 1) % b, (k, 1)),
           "perm drawn with replacement": rng.integers(0, b, (k, b))}.get(
               bug, np.argsort(rng.random((k, b)), axis=1))
  moved = coin & (perms != np.arange(b))
  v = np.where(moved, np.broadcast_to(lam, (k, b)), 1.0)
  partner = np.where(moved & (v < 1 - ATOM), perms, np.arange(b))
  return np.broadcast_to(coin, (k, b)).any(1), v, partner


def test_mixstyle_and_perm_checks_reject_plausible_bugs():
  """Simulated observations of the reference law pass; a coin per example, one λ per batch,
  λ folded like mixup's, a roll-by-one or with-replacement perm, the coin inverted (rate 0.6)
  fail, and so do non-uniform perms (roll, identity, with replacement, parity-keeping)."""
  rng = np.random.default_rng(2)
  assert mixstyle_failures(*_simulated_mixstyle(rng, 0.4, 0.3), 0.4, 0.3) == []
  for bug, check in [("one coin per example", "application rate"),
                     ("one lambda per batch", "lambda per example"),
                     ("lambda = max(b, 1 − b)", "lambda law"),
                     ("perm = roll by 1", "partner positions"),
                     ("perm drawn with replacement", "not a permutation")]:
    assert check in mixstyle_failures(*_simulated_mixstyle(rng, 0.4, 0.3, bug), 0.4, 0.3), bug
  observed = _simulated_mixstyle(rng, 0.6, 0.3)          # the coin taken the wrong way round
  assert "application rate" in mixstyle_failures(*observed, 0.4, 0.3)
  k = 2000
  assert perm_failures(np.argsort(rng.random((k, MIX_B)), axis=1)) == []
  roll = np.tile((np.arange(MIX_B) + 1) % MIX_B, (k, 1))            # jnp.roll(x, 1) as the "perm"
  assert perm_failures(roll) != []
  assert perm_failures(np.tile(np.arange(MIX_B), (k, 1))) != []     # identity
  assert perm_failures(rng.integers(0, MIX_B, (k, MIX_B))) == ["not a permutation"]
  half = np.argsort(rng.random((k, MIX_B // 2)), axis=1)            # keeps parity: even → even
  parity = np.empty((k, MIX_B), int)
  parity[:, 0::2], parity[:, 1::2] = 2 * half, 2 * half + 1
  assert "positions" in perm_failures(parity)


@functools.lru_cache(maxsize=None)
def _jax_beta_draws():
  """Our mixstyle on the probe at the d23 student setting p = 0.4, α = 0.3 (N_STYLE keys) and
  our mixup draws, α = 0.3 (N_MIXUP batches of 8): one compiled program, as XLA takes seconds
  to compile each use of the Beta (gamma) sampler."""
  def draw(k_style, k_mixup):
    style = jax.vmap(lambda k: augment.mixstyle(k, jnp.asarray(MIX_PROBE), 0.4, 0.3))(
        jax.random.split(k_style, N_STYLE))
    perm, lam = jax.vmap(lambda k: augment.mixup_draw(k, MIX_B, 0.3))(
        jax.random.split(k_mixup, N_MIXUP))
    return style, perm, lam
  return tuple(np.asarray(a) for a in jax.jit(draw)(*jax.random.split(jax.random.key(0))))


def _jax_mixstyle():
  return _jax_beta_draws()[0]


def _jax_mixup():
  return _jax_beta_draws()[1:]


def test_mixstyle_draws_follow_the_reference_law():
  """One coin per batch (p = 0.4), λ ~ Beta(0.3, 0.3) per sample, a uniform random perm."""
  assert mixstyle_failures(*mixstyle_observed(_jax_mixstyle()), 0.4, 0.3) == []


def test_torch_mixstyle_reference_draws_match_ours():
  """The reference written in torch passes the same checks, and its λ and application counts
  are one distribution with ours (two-sample KS, 2×2 homogeneity)."""
  torch = _torch()
  torch.manual_seed(0)
  probe = torch.tensor(MIX_PROBE)[:, None]                            # (B, 1, F, T)
  ref = np.stack([torch_mixstyle(probe, 0.4, 0.3)[:, 0].numpy() for _ in range(N_STYLE)])
  ref_applied, ref_v, ref_partner = mixstyle_observed(ref)
  assert mixstyle_failures(ref_applied, ref_v, ref_partner, 0.4, 0.3) == []
  applied, v, _ = mixstyle_observed(_jax_mixstyle())
  assert same_p([applied.sum(), (~applied).sum()],
                [ref_applied.sum(), (~ref_applied).sum()]) > P_MIN
  ours_v, ref_v = v[applied].ravel(), ref_v[ref_applied].ravel()
  assert scipy.stats.ks_2samp(ours_v, ref_v).pvalue > P_MIN
  ref_perms = np.stack([torch.randperm(MIX_B).numpy() for _ in range(2000)])
  assert perm_failures(ref_perms) == []


# ----------------------------------------------------------------------------- 3. mixup
def mixup_failures(lam, alpha) -> list:
  """λ = max(b, 1 − b), b ~ Beta(α, α) per sample: λ ∈ [0.5, 1]; KS against its exact CDF
  2·I_λ(α, α) − 1; λ of examples 0 and 1 uncorrelated."""
  lam = np.asarray(lam, np.float64)
  if lam.min() < 0.5 or lam.max() > 1:
    return ["range"]
  fails = []
  beta = scipy.stats.beta(alpha, alpha)
  if scipy.stats.kstest(lam.ravel(), lambda s: 2 * beta.cdf(s) - 1).pvalue < P_MIN:
    fails.append("lambda law")
  if abs(z_corr(lam[:, 0], lam[:, 1])) > Z_MAX:
    fails.append("lambda per example")
  return fails


def test_mixup_draws_follow_the_reference_law_and_checks_reject_bugs():
  """Ours: λ = max(b, 1 − b) per sample (KS against the exact CDF) and a uniform perm; the same
  checks reject λ = b, λ = min(b, 1 − b), one λ per batch and a different α."""
  perm, lam = _jax_mixup()
  assert mixup_failures(lam, 0.3) == [] and perm_failures(perm) == []
  rng = np.random.default_rng(3)
  b = rng.beta(0.3, 0.3, (N_MIXUP, MIX_B))
  assert mixup_failures(np.maximum(b, 1 - b), 0.3) == []
  assert mixup_failures(b, 0.3) == ["range"]                              # λ = b
  assert mixup_failures(np.minimum(b, 1 - b), 0.3) == ["range"]
  per_batch = np.maximum(b, 1 - b)[:, :1].repeat(MIX_B, 1)
  assert mixup_failures(per_batch, 0.3) == ["lambda per example"]
  assert "lambda law" in mixup_failures(np.maximum(b, 1 - b), 0.4)        # a different α


def test_mixup_matches_torch_draws_and_mixes_inputs_and_labels_like_the_reference():
  """λ two-sample KS vs torch's Beta draws; λ·x + (1 − λ)·x[perm] on inputs and one-hot labels;
  CE on mixed one-hot targets = the reference loss λ·CE(y) + (1 − λ)·CE(y[perm])."""
  torch = _torch()
  torch.manual_seed(0)
  b = torch.distributions.Beta(0.3, 0.3).sample((N_MIXUP, MIX_B))
  ref_lam = torch.maximum(b, 1 - b).numpy()
  assert mixup_failures(ref_lam, 0.3) == []
  _, lam = _jax_mixup()
  assert scipy.stats.ks_2samp(lam.ravel(), ref_lam.ravel()).pvalue > P_MIN

  rng = np.random.default_rng(4)
  x = rng.standard_normal((MIX_B, 3, 5)).astype(np.float32)
  labels = rng.integers(0, 10, MIX_B)
  logits = rng.standard_normal((MIX_B, 10)).astype(np.float32)
  perm = np.array([2, 0, 1, 3, 7, 4, 5, 6])
  lam = np.float32(0.5) + np.float32(0.5) * rng.random(MIX_B).astype(np.float32)
  xt, lt, pt = torch.tensor(x), torch.tensor(lam), torch.tensor(perm)
  ref_x = lt.view(-1, 1, 1) * xt + (1 - lt.view(-1, 1, 1)) * xt[pt]
  ours_x = augment.mix(jnp.asarray(x), jnp.asarray(perm), jnp.asarray(lam))
  np.testing.assert_allclose(np.asarray(ours_x), ref_x.numpy(), rtol=1e-6, atol=1e-6)
  one_hot = jax.nn.one_hot(labels, 10)
  targets = augment.mix(one_hot, jnp.asarray(perm), jnp.asarray(lam))
  yt = torch.tensor(labels)
  ce = torch.nn.functional.cross_entropy
  ref_loss = (lt * ce(torch.tensor(logits), yt, reduction="none") +
              (1 - lt) * ce(torch.tensor(logits), yt[pt], reduction="none")).mean()
  ours_loss = classification.cross_entropy(jnp.asarray(logits), targets)
  np.testing.assert_allclose(float(ours_loss), float(ref_loss), rtol=1e-5)
  inverse = augment.mix(one_hot, jnp.asarray(np.argsort(perm)), jnp.asarray(lam))
  assert abs(float(classification.cross_entropy(jnp.asarray(logits), inverse)) -
             float(ref_loss)) > 1e-3      # the check tells the perm's direction apart


# ----------------------------------------------------------------------------- 4. time roll, gain
def roll_failures(shifts, max_shift) -> list:
  """s ~ U{−max … max} inclusive, one per example (consecutive draws uncorrelated)."""
  shifts = np.asarray(shifts)
  cells = 2 * max_shift + 1
  if np.abs(shifts).max() > max_shift:
    return ["range"]
  fails = []
  if gof_p(np.bincount(shifts + max_shift, minlength=cells), np.full(cells, 1 / cells)) < P_MIN:
    fails.append("law")
  if abs(z_corr(shifts[:-1:2], shifts[1::2])) > Z_MAX:
    fails.append("per example")
  return fails


def _recovered_shifts(out, n):
  """Shifts of rows rolled from arange(n), in torch.roll's direction (out[i] = x[i − s])."""
  s = np.mod(-np.rint(out[:, 0]).astype(int), n)
  s = np.where(s > n // 2, s - n, s)
  expected = np.mod(np.arange(n)[None, :] - s[:, None], n)
  np.testing.assert_array_equal(out, expected.astype(out.dtype))
  return s


N_ROLL = 45000


@functools.lru_cache(maxsize=None)
def _jax_roll():
  """Rows arange(16) rolled with max 4 (N_ROLL rows) and arange(8192) with the d23 max 4000
  (2000 rows), in one compiled call: (small output, small shifts, wide shifts)."""
  def draw(key):
    k_small, k_wide = jax.random.split(key)
    small = augment.time_roll(k_small, jnp.tile(jnp.arange(16.0), (N_ROLL, 1)), 4)
    wide = augment.time_roll(k_wide, jnp.tile(jnp.arange(8192.0), (2000, 1)), 4000)
    return small, wide
  small, wide = (np.asarray(a) for a in jax.jit(draw)(jax.random.key(0)))
  return small, _recovered_shifts(small, 16), _recovered_shifts(wide, 8192)


def test_time_roll_shifts_are_uniform_inclusive_per_example():
  """Small support (max 4, each of the 9 values ~5000 times): catches a range exclusive of
  +max, ±(max − 1), non-negative shifts, one shift per batch. At the d23 size (max 4000; rows
  of 8192 samples are enough to read a shift) the shifts stay within ±4000, reach both ends,
  and have the mean and variance of U{−4000 … 4000}."""
  _, shifts, wide = _jax_roll()
  assert roll_failures(shifts, 4) == []
  rng = np.random.default_rng(5)
  assert roll_failures(rng.integers(-4, 5, N_ROLL), 4) == []
  assert roll_failures(rng.integers(-4, 4, N_ROLL), 4) == ["law"]         # exclusive of +max
  assert roll_failures(rng.integers(-3, 4, N_ROLL), 4) == ["law"]
  assert roll_failures(rng.integers(0, 5, N_ROLL), 4) == ["law"]
  assert roll_failures(np.repeat(rng.integers(-4, 5, N_ROLL // 2), 2), 4) == ["per example"]
  assert np.abs(wide).max() <= 4000 and wide.min() < -3900 and wide.max() > 3900
  var = 4000 * 4001 / 3                                     # of U{−m … m}: m(m + 1)/3
  assert abs(wide.mean()) < Z_MAX * np.sqrt(var / len(wide))
  assert abs(wide.var() / var - 1) < Z_MAX * np.sqrt(0.8 / len(wide))   # Var(s²)/var² ≈ 0.8


def test_time_roll_matches_torch_sampling_and_direction():
  """Our shifts and torch.randint(−max, max + 1) are one distribution; for given shifts (the
  sampled ones read off without assuming a direction would be circular) `roll_by` is
  torch.roll, so a positive shift delays the clip."""
  torch = _torch()
  torch.manual_seed(0)
  ref = torch.randint(-4, 4 + 1, (N_ROLL,)).numpy()      # d23: U{−max … max}, inclusive
  _, shifts, _ = _jax_roll()
  assert same_p(np.bincount(shifts + 4, minlength=9), np.bincount(ref + 4, minlength=9)) > P_MIN
  x = np.random.default_rng(11).standard_normal((9, 50)).astype(np.float32)
  given = np.array([-4000, -7, -1, 0, 1, 3, 24, 49, 4001])
  ours = np.asarray(augment.roll_by(jnp.asarray(x), jnp.asarray(given)))
  for row, clip, s in zip(ours, x, given):
    np.testing.assert_array_equal(row, torch.roll(torch.tensor(clip), int(s)).numpy())


def test_random_gain_is_uniform_in_db_per_example():
  """No reference uses a gain (facts §5); this holds `random_gain` to its docstring: one
  g ~ U(−max_db, max_db) dB per clip (KS), independent across clips."""
  out = np.asarray(augment.random_gain(jax.random.key(0), jnp.ones((20000, 3)), 6.0))
  assert np.array_equal(out, np.broadcast_to(out[:, :1], out.shape))
  gains = 20 * np.log10(out[:, 0].astype(np.float64))
  assert scipy.stats.kstest(gains, scipy.stats.uniform(-6.0, 12.0).cdf).pvalue > P_MIN
  assert abs(z_corr(gains[:-1:2], gains[1::2])) < Z_MAX
  # a gain uniform in amplitude over the same range fails
  amp = np.random.default_rng(6).uniform(10 ** -0.3, 10 ** 0.3, 20000)
  assert scipy.stats.kstest(20 * np.log10(amp), scipy.stats.uniform(-6.0, 12.0).cdf).pvalue < P_MIN


# ----------------------------------------------------------------------------- 5. DIR
N_DIR, DIR_M, DIR_L, DIR_N = 60000, 66, 8, 32
N_DIR_RANDOM = 600   # the first rows are noise (the convolution check), the rest unit impulses
DIR_PROB = 0.6


def _dir_case():
  """Unit impulses (a convolved row is then its IR, so the IR index reads off), noise rows for
  the convolution itself, 66 random IRs (d23: the 66 MicIRP responses), every third clip
  eligible (d23: device 'a' only)."""
  rng = np.random.default_rng(7)
  x = np.zeros((N_DIR, DIR_N), np.float32)
  x[:, 0] = 1.0
  x[:N_DIR_RANDOM] = rng.standard_normal((N_DIR_RANDOM, DIR_N))
  irs = rng.standard_normal((DIR_M, DIR_L)).astype(np.float32)
  eligible = np.arange(N_DIR) % 3 == 0
  return x, irs, eligible


def dir_observed(out, x, irs):
  """(applied, IR index) per row. An applied impulse row must be exactly one IR, zero-padded;
  an applied noise row must be `scipy.signal.convolve(x, ir, 'full')[:len(x)]` for one IR
  (d23 `DIRAugmentDataset`: no IR normalisation, no gain compensation) and no other."""
  applied = ~(out == x).all(axis=1)
  choice = np.full(len(out), -1)
  impulse = applied.copy()
  impulse[:N_DIR_RANDOM] = False
  rows = out[impulse]
  dist = np.abs(rows[:, None, :DIR_L] - irs[None]).max(-1)
  choice[impulse] = dist.argmin(1)
  assert dist.min(1).max() < 1e-4 and np.abs(rows[:, DIR_L:]).max() < 1e-4
  for i in np.flatnonzero(applied[:N_DIR_RANDOM]):
    refs = [scipy.signal.convolve(x[i].astype(np.float64), ir, "full")[:DIR_N] for ir in irs]
    errors = np.array([np.abs(out[i] - r).max() / np.abs(r).max() for r in refs])
    choice[i] = errors.argmin()
    assert errors.min() < 1e-5 and np.sort(errors)[1] > 1e-2, i
  return applied, choice


def dir_failures(applied, choice, eligible, prob, m) -> list:
  """Applied only to eligible clips, with probability prob there; IR index uniform over M."""
  fails = []
  if (applied & ~eligible).any():
    fails.append("ineligible clip changed")
  if abs(z_prop((applied & eligible).sum(), eligible.sum(), prob)) > Z_MAX:
    fails.append("probability")
  if gof_p(np.bincount(choice[applied], minlength=m), np.full(m, 1 / m)) < P_MIN:
    fails.append("IR law")
  return fails


def _reference_dir(rng, eligible, prob, m, bug=None):
  """d23 `DIRAugmentDataset` per clip: device 'a' only, `random() < dir_prob`, IR uniform."""
  n = len(eligible)
  u = rng.random(n)
  applied = (u > prob) if bug == "applied when u > prob" else (u < prob)
  if bug != "eligibility ignored":
    applied &= eligible
  choice = rng.integers(0, m - 1 if bug == "last IR never drawn" else m, n)
  if bug == "one IR per batch of 64":
    choice = np.repeat(choice[::64], 64)[:n]
  return applied, np.where(applied, choice, -1)


def test_dir_checks_reject_plausible_bugs():
  """The reference sampler passes; the probability taken the wrong way round, eligibility
  ignored, the last IR never drawn, one IR for a whole batch all fail."""
  rng = np.random.default_rng(8)
  _, _, eligible = _dir_case()
  assert dir_failures(*_reference_dir(rng, eligible, DIR_PROB, DIR_M), eligible, DIR_PROB,
                      DIR_M) == []
  for bug, check in [("applied when u > prob", "probability"),
                     ("eligibility ignored", "ineligible clip changed"),
                     ("last IR never drawn", "IR law"), ("one IR per batch of 64", "IR law")]:
    fails = dir_failures(*_reference_dir(rng, eligible, DIR_PROB, DIR_M, bug), eligible,
                         DIR_PROB, DIR_M)
    assert check in fails, bug


def test_dir_applies_with_probability_to_eligible_clips_and_draws_irs_uniformly():
  """Ineligible clips untouched, eligible ones convolved with probability 0.6 (d23 student),
  the IR index uniform over the 66, the convolution scipy's 'full' truncated to the clip."""
  x, irs, eligible = _dir_case()
  out = augment.device_impulse_response(jax.random.key(0), jnp.asarray(x), jnp.asarray(irs),
                                        DIR_PROB, eligible=jnp.asarray(eligible))
  applied, choice = dir_observed(np.asarray(out), x, irs)
  assert applied[:N_DIR_RANDOM].sum() > 50                      # the convolution was checked
  assert dir_failures(applied, choice, eligible, DIR_PROB, DIR_M) == []


# ----------------------------------------------------------------------------- 6. fmin/fmax jitter
N_JITTER = 50000
JITTER_CASES = {   # value, aug_range, direction → the exact support (d23 AugmentMelSTFT)
    "d23_fmax_15500_1000": (15500.0, 1000, -1, np.arange(15001, 16001)),
    "passt_fmax_15000_2000": (15000.0, 2000, -1, np.arange(14001, 16001)),
    "passt_fmin_0_10": (0.0, 10, +1, np.arange(0, 10)),
    "d23_fmin_0_1": (0.0, 1, +1, np.array([0])),
}


def jitter_failures(values, support) -> list:
  """Values on exactly `support` (consecutive integers), uniformly."""
  values = np.asarray(values, np.float64)
  if not np.isin(values, support).all():
    return ["support"]
  counts = np.bincount((values - support[0]).astype(int), minlength=len(support))
  if gof_p(counts, np.full(len(support), 1 / len(support))) < P_MIN:
    return ["law"]
  return []


@functools.lru_cache(maxsize=None)
def _jax_jitter():
  """N_JITTER draws of every case, one compiled call: {case: values}."""
  def draw(keys):
    return {case: jax.vmap(lambda k: augment.jitter_corner(k, value, aug_range, direction))(keys)
            for case, (value, aug_range, direction, _) in JITTER_CASES.items()}
  out = jax.jit(draw)(jax.random.split(jax.random.key(0), N_JITTER))
  return {case: np.asarray(v) for case, v in out.items()}


@pytest.mark.parametrize("case", list(JITTER_CASES))
def test_corner_jitter_takes_exactly_the_reference_values_uniformly(case):
  """fmin + randint(range); fmax + range//2 − randint(range): catches randint(range + 1),
  the wrong direction or half-range, and a non-uniform draw."""
  value, aug_range, direction, support = JITTER_CASES[case]
  assert jitter_failures(_jax_jitter()[case], support) == []
  if aug_range > 1:
    rng = np.random.default_rng(10)
    draw = lambda hi: rng.integers(0, hi, N_JITTER)
    sign = 1 if direction > 0 else -1
    offset = 0 if direction > 0 else aug_range // 2
    assert jitter_failures(value + offset + sign * draw(aug_range), support) == []
    assert jitter_failures(value + offset + sign * draw(aug_range + 1), support) == ["support"]
    assert jitter_failures(value - offset - sign * draw(aug_range), support) == ["support"]


@pytest.mark.parametrize("case", ["d23_fmax_15500_1000", "passt_fmin_0_10"])
def test_corner_jitter_matches_torch_draws(case):
  """The d23 formula with torch.randint passes the same check and matches our histogram."""
  torch = _torch()
  torch.manual_seed(0)
  value, aug_range, direction, support = JITTER_CASES[case]
  draws = torch.randint(aug_range, (N_JITTER,)).numpy()
  ref = value + draws if direction > 0 else value + aug_range // 2 - draws
  assert jitter_failures(ref, support) == []
  hist = lambda v: np.bincount((np.asarray(v) - support[0]).astype(int), minlength=len(support))
  assert same_p(hist(_jax_jitter()[case]), hist(ref)) > P_MIN
