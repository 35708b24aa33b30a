"""ResUNetK (jax_asc/models/resunetk.py) against a plainly written PyTorch ResUNetK, and its
converter (jax_asc/models/convert.py: resunetk_params).

The PyTorch model below follows the T4 baseline (nttcslab/dcase2026_task4_baseline
`src/models/resunet2/resunet_mod.py`, `ResUNet30` with K = 3 sources, 4 → 1 `out_conv`) and its
ancestor bytedance/uss `uss/models/resunet.py`; it is written out here, STFT and iSTFT as
torchlibrosa computes them (Conv1d with DFT matrices, fold + window-envelope division), and
keeps the baseline's state-dict names, so the converter sees a checkpoint of the released
layout. Tiny widths and 0.25-s clips keep it to seconds on a CPU.
"""
import numpy as np
import pytest

import jax

from jax_asc import models
from jax_asc.models import convert
from jax_asc.models.resunetk import ResUNetK, istft, stft

N_FFT, HOP, SR = 1024, 160, 32000
WIDTHS = (4, 8, 8, 16, 16, 16)       # shortcut convolutions where the width changes, none where not
LENGTH = SR // 4                      # 0.25 s → 51 frames, padded to 64
K, N_CLASSES, CHANNELS = 3, 18, 4
TOL = 1e-4                            # max |jax − torch| ≤ TOL · max |torch| (relative to the peak)


# ----------------------------------------------------------------------------- PyTorch reference
def torch_reference(widths=WIDTHS, n_fft=N_FFT, hop=HOP, in_channels=CHANNELS, sources=K,
                    n_classes=N_CLASSES, condition=512):
  """The T4 ResUNet30 written out, with its module and parameter names."""
  import torch
  import torch.nn.functional as F
  from torch import nn

  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)   # periodic Hann
  bins = n_fft // 2 + 1

  class STFT(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
      self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
      dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft), np.arange(bins)) / n_fft)
      self.conv_real.weight.data = torch.tensor((dft.real * window[:, None]).T[:, None, :],
                                                dtype=torch.float32)
      self.conv_imag.weight.data = torch.tensor((dft.imag * window[:, None]).T[:, None, :],
                                                dtype=torch.float32)

    def forward(self, x):                     # (N, L) → real, imag (N, 1, T, F)
      x = F.pad(x[:, None, :], (n_fft // 2, n_fft // 2), mode="reflect")
      return self.conv_real(x).mT[:, None], self.conv_imag(x).mT[:, None]

  class ISTFT(nn.Module):
    def __init__(self):
      super().__init__()
      idft = np.exp(2j * np.pi * np.outer(np.arange(n_fft), np.arange(n_fft)) / n_fft) / n_fft
      self.conv_real = nn.Conv1d(n_fft, n_fft, 1, bias=False)
      self.conv_imag = nn.Conv1d(n_fft, n_fft, 1, bias=False)
      self.conv_real.weight.data = torch.tensor((idft.real * window[None, :]).T[:, :, None],
                                                dtype=torch.float32)
      self.conv_imag.weight.data = torch.tensor((idft.imag * window[None, :]).T[:, :, None],
                                                dtype=torch.float32)
      self.register_buffer("ola_window", torch.tensor(window ** 2, dtype=torch.float32))

    def forward(self, real, imag, length):    # (N, 1, T, F) → (N, length)
      real, imag = real[:, 0].transpose(1, 2), imag[:, 0].transpose(1, 2)
      full_real = torch.cat([real, real[:, 1:-1].flip(1)], 1)
      full_imag = torch.cat([imag, -imag[:, 1:-1].flip(1)], 1)
      frames = self.conv_real(full_real) - self.conv_imag(full_imag)    # (N, n_fft, T)
      total = (frames.shape[-1] - 1) * hop + n_fft
      y = F.fold(frames, (1, total), (1, n_fft), stride=(1, hop))[:, 0, 0]
      envelope = F.fold(self.ola_window[None, :, None].repeat(1, 1, frames.shape[-1]),
                        (1, total), (1, n_fft), stride=(1, hop))[0, 0, 0]
      y = y / envelope.clamp(min=1e-11)
      return y[:, n_fft // 2:n_fft // 2 + length]

  def bn(c):
    return nn.BatchNorm2d(c, momentum=0.01)

  class ConvBlockRes(nn.Module):
    def __init__(self, cin, cout):
      super().__init__()
      self.bn1, self.bn2 = bn(cin), bn(cout)
      self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
      self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
      self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, film, at):
      h = self.conv1(F.leaky_relu(self.bn1(x) + film(f"{at}->beta1"), 0.01))
      h = self.conv2(F.leaky_relu(self.bn2(h) + film(f"{at}->beta2"), 0.01))
      return (x if self.shortcut is None else self.shortcut(x)) + h

  class Encoder(nn.Module):
    def __init__(self, cin, cout, pool):
      super().__init__()
      self.conv_block1, self.pool = ConvBlockRes(cin, cout), pool

    def forward(self, x, film, at):
      x = self.conv_block1(x, film, f"{at}->conv_block1")
      return F.avg_pool2d(x, self.pool), x

  class Decoder(nn.Module):
    def __init__(self, cin, cout, up):
      super().__init__()
      self.conv1 = nn.ConvTranspose2d(cin, cout, up, stride=up, bias=False)
      self.bn1 = bn(cin)
      self.conv_block2 = ConvBlockRes(2 * cout, cout)
      self.bn2 = bn(cin)              # built by the baseline, never called

    def forward(self, x, skip, film, at):
      x = self.conv1(F.leaky_relu(self.bn1(x) + film(f"{at}->beta1"), 0.01))
      return self.conv_block2(torch.cat([x, skip], 1), film, f"{at}->conv_block2")

  pools = [(2, 2)] * 5 + [(1, 2)]

  class Base(nn.Module):
    def __init__(self):
      super().__init__()
      self.stft, self.istft, self.bn0 = STFT(), ISTFT(), bn(bins)
      self.pre_conv = nn.Conv2d(in_channels, widths[0], 1)
      cins = [widths[0]] + list(widths[:-1])
      for i in range(6):
        setattr(self, f"encoder_block{i + 1}", Encoder(cins[i], widths[i], pools[i]))
      self.conv_block7a = Encoder(widths[-1], widths[-1], (1, 1))
      outs = list(reversed(widths))
      ins = [widths[-1]] + outs[:-1]
      for i in range(6):
        setattr(self, f"decoder_block{i + 1}", Decoder(ins[i], outs[i], pools[5 - i]))
      self.after_conv = nn.Conv2d(widths[0], in_channels * 3 * sources, 1)
      self.out_conv = nn.Conv2d(in_channels, 1, 1)

    def forward(self, mixture, film, source_mask):
      batch, _, length = mixture.shape
      mags, coss, sins = [], [], []
      for c in range(in_channels):
        real, imag = self.stft(mixture[:, c])
        mag = (real ** 2 + imag ** 2).clamp(min=1e-10) ** 0.5
        mags.append(mag)
        coss.append(real / mag)
        sins.append(imag / mag)
      mag, cos_x, sin_x = torch.cat(mags, 1), torch.cat(coss, 1), torch.cat(sins, 1)
      x = self.bn0(mag.transpose(1, 3)).transpose(1, 3)              # (B, C, T, F)
      frames = x.shape[2]
      x = F.pad(x, (0, 0, 0, -frames % 32))[..., :-1]
      x = self.pre_conv(x)
      skips = []
      for i in range(6):
        x, skip = getattr(self, f"encoder_block{i + 1}")(x, film, f"encoder_block{i + 1}")
        skips.append(skip)
      x, _ = self.conv_block7a(x, film, "conv_block7a")
      for i in range(6):
        x = getattr(self, f"decoder_block{i + 1}")(x, skips[5 - i], film, f"decoder_block{i + 1}")
      x = F.pad(self.after_conv(x), (0, 1))[:, :, :frames]
      x = x.reshape(batch, sources, in_channels, 3, frames, bins)
      mask_mag = torch.sigmoid(x[:, :, :, 0])
      m_re, m_im = torch.tanh(x[:, :, :, 1]), torch.tanh(x[:, :, :, 2])
      m_abs = (m_re ** 2 + m_im ** 2) ** 0.5
      m_cos, m_sin = m_re / m_abs.clamp(min=1e-10), m_im / m_abs.clamp(min=1e-10)
      y_cos = cos_x[:, None] * m_cos - sin_x[:, None] * m_sin
      y_sin = sin_x[:, None] * m_cos + cos_x[:, None] * m_sin
      y_mag = F.relu(mag[:, None] * mask_mag)
      shape = (batch * sources, in_channels, frames, bins)
      y_real = self.out_conv((y_mag * y_cos).reshape(shape))
      y_imag = self.out_conv((y_mag * y_sin).reshape(shape))
      wave = self.istft(y_real, y_imag, length).reshape(batch, sources, 1, length)
      return wave * source_mask[:, :, None, None]

  film_sizes = {}
  for i, w in enumerate([widths[0]] + list(widths[:-1])):
    film_sizes[f"encoder_block{i + 1}->conv_block1->beta1"] = w
    film_sizes[f"encoder_block{i + 1}->conv_block1->beta2"] = widths[i]
  film_sizes["conv_block7a->conv_block1->beta1"] = widths[-1]
  film_sizes["conv_block7a->conv_block1->beta2"] = widths[-1]
  outs = list(reversed(widths))
  for i, cin in enumerate([widths[-1]] + outs[:-1]):
    film_sizes[f"decoder_block{i + 1}->beta1"] = cin
    film_sizes[f"decoder_block{i + 1}->beta2"] = cin          # never called, as bn2
    film_sizes[f"decoder_block{i + 1}->conv_block2->beta1"] = 2 * outs[i]
    film_sizes[f"decoder_block{i + 1}->conv_block2->beta2"] = outs[i]

  class FiLM(nn.Module):
    def __init__(self):
      super().__init__()
      for name, size in film_sizes.items():
        self.add_module(name, nn.Linear(condition, size))

  class ResUNet30(nn.Module):
    def __init__(self):
      super().__init__()
      self.base = Base()
      self.label_embedding = nn.Sequential(
          nn.Linear(sources * n_classes, condition), nn.LayerNorm(condition), nn.ReLU(),
          nn.Linear(condition, condition), nn.LayerNorm(condition), nn.ReLU())
      self.film = FiLM()

    def forward(self, mixture, label_vector):
      source_mask = (label_vector.view(len(label_vector), sources, -1).sum(2) != 0).float()
      cond = self.label_embedding(label_vector)
      layers = dict(self.film.named_children())
      return self.base(mixture, lambda name: layers[name](cond)[:, :, None, None], source_mask)

  return ResUNet30()


def randomise(model, seed=0):
  """The baseline's `init_layer` (xavier-uniform weights) on the U-Net's and FiLM's layers, so
  that activations keep their scale through the depth and every layer matters in evaluation
  mode; then nonzero biases, and batch norms away from the identity (random affine and running
  statistics, bn0's around the magnitudes of the test signal)."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, m in model.named_modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
        if not name.startswith("label_embedding") and not name.endswith("out_conv"):
          torch.nn.init.xavier_uniform_(m.weight, generator=g)
        if m.bias is not None:
          m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=g))
        m.bias.copy_(0.2 * torch.randn(n, generator=g))
        if name.endswith("bn0"):    # |STFT| of 0.1-σ noise: about 2
          m.running_mean.copy_(1.0 + 2.0 * torch.rand(n, generator=g))
          m.running_var.copy_(0.5 + 3.0 * torch.rand(n, generator=g))
        else:
          m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
          m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))


def inputs(batch=2, seed=0):
  """A noise mixture (B, 4, L) and label vectors with one silent track per example."""
  rng = np.random.default_rng(seed)
  mixture = (0.1 * rng.standard_normal((batch, CHANNELS, LENGTH))).astype(np.float32)
  labels = np.zeros((batch, K, N_CLASSES), np.float32)
  for b in range(batch):
    for k in range(K):
      if k != (b + 1) % K:
        labels[b, k, rng.integers(N_CLASSES)] = 1.0
  return mixture, labels.reshape(batch, K * N_CLASSES)


@pytest.fixture(scope="module")
def reference():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  ref = torch_reference()
  randomise(ref)
  state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
  return ref, state


@pytest.fixture(scope="module")
def model():
  return ResUNetK(widths=WIDTHS)


def max_rel_error(ours, theirs):
  return float(np.max(np.abs(np.asarray(ours) - theirs)) / np.max(np.abs(theirs)))


# ----------------------------------------------------------------------------- STFT
def test_stft_matches_torch_and_round_trips():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(1).standard_normal((2, LENGTH)).astype(np.float32)
  real, imag = jax.jit(lambda x: stft(x, N_FFT, HOP))(x)
  window = torch.hann_window(N_FFT)                                   # periodic
  theirs = torch.stft(torch.from_numpy(x), N_FFT, HOP, window=window, center=True,
                      pad_mode="reflect", return_complex=True).transpose(1, 2).numpy()
  assert real.shape == (2, 1 + LENGTH // HOP, N_FFT // 2 + 1)
  np.testing.assert_allclose(real, theirs.real, atol=1e-5 * np.abs(theirs).max())
  np.testing.assert_allclose(imag, theirs.imag, atol=1e-5 * np.abs(theirs).max())
  # Round trip, and iSTFT of an arbitrary (inconsistent) spectrum as torch.istft computes it.
  back = jax.jit(lambda r, i: istft(r, i, N_FFT, HOP, LENGTH))(real, imag)
  np.testing.assert_allclose(back, x, atol=1e-5)
  rng = np.random.default_rng(2)
  spec = rng.standard_normal((2, 2) + real.shape[1:]).astype(np.float32)
  ours = jax.jit(lambda r, i: istft(r, i, N_FFT, HOP, LENGTH))(spec[0], spec[1])
  theirs = torch.istft(torch.complex(torch.from_numpy(spec[0]), torch.from_numpy(spec[1]))
                       .transpose(1, 2), N_FFT, HOP, window=window, center=True, length=LENGTH)
  np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- parity
def test_parity_eval(reference, model):
  torch = pytest.importorskip("torch")
  ref, state = reference
  variables = convert.resunetk_params(state, model)
  mixture, labels = inputs()
  ours = jax.jit(lambda v, x, l: model.apply(v, x, l))(variables, mixture, labels)
  ref.eval()
  with torch.no_grad():
    theirs = ref(torch.from_numpy(mixture), torch.from_numpy(labels)).numpy()
  assert ours.shape == theirs.shape == (2, K, 1, LENGTH)
  assert max_rel_error(ours, theirs) < TOL
  # The source mask: silent tracks (k = b + 1 mod 3) are exactly zero, the others are not.
  peaks = np.abs(np.asarray(ours)).max(axis=(2, 3))
  silent = np.array([[k == (b + 1) % K for k in range(K)] for b in range(2)])
  assert np.all(peaks[silent] == 0) and np.all(peaks[~silent] > 0)


def test_parity_train(reference, model):
  """Training mode: batch statistics, and the running averages they update (momentum 0.01,
  unbiased variance, as torch.nn.BatchNorm2d)."""
  torch = pytest.importorskip("torch")
  ref, state = reference
  variables = convert.resunetk_params(state, model)
  mixture, labels = inputs(seed=3)
  ours, updates = jax.jit(lambda v, x, l: model.apply(v, x, l, train=True,
                                                      mutable=["batch_stats"]))(
      variables, mixture, labels)
  ref_train = torch_reference()
  ref_train.load_state_dict(ref.state_dict())
  ref_train.train()
  with torch.no_grad():
    theirs = ref_train(torch.from_numpy(mixture), torch.from_numpy(labels)).numpy()
  assert max_rel_error(ours, theirs) < TOL
  stats = convert.resunetk_params({k: v.detach().numpy() for k, v in
                                   ref_train.state_dict().items()}, model)["batch_stats"]
  for ours_leaf, theirs_leaf in zip(jax.tree.leaves(updates["batch_stats"]),
                                    jax.tree.leaves(stats)):
    np.testing.assert_allclose(ours_leaf, theirs_leaf, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- converter
def test_converter_reads_lightning_checkpoint_and_settings(reference, model):
  _, state = reference
  lightning = {f"model.{k}": v for k, v in state.items()}
  settings = convert.resunetk_settings(lightning)
  assert settings == {"in_channels": CHANNELS, "num_sources": K, "n_classes": N_CLASSES,
                      "condition_size": 512, "widths": WIDTHS, "n_fft": N_FFT}
  variables = convert.resunetk_params(lightning)
  expected = convert.resunetk_params(state, model)
  assert jax.tree.structure(variables) == jax.tree.structure(expected)
  assert "beta2" not in variables["params"]["decoder_block1"]      # dead in the reference
  assert "bn2" not in variables["params"]["decoder_block1"]
  assert isinstance(models.build({"name": "resunetk", "widths": list(WIDTHS)}), ResUNetK)


def test_converter_errors(reference, model):
  _, state = reference
  missing = dict(state)
  name = "base.encoder_block2.conv_block1.shortcut.bias"
  del missing[name]
  with pytest.raises(ValueError, match=rf"missing \['{name}'\]"):
    convert.resunetk_params(missing, model)
  unused = dict(state, **{"base.encoder_block9.conv1.weight": np.zeros((2, 2, 3, 3))})
  with pytest.raises(ValueError, match=r"unused \['base.encoder_block9.conv1.weight'\]"):
    convert.resunetk_params(unused, model)
  wrong = dict(state, **{"film.decoder_block3->conv_block2->beta1.weight": np.zeros((5, 512))})
  with pytest.raises(ValueError, match=r"film.decoder_block3->conv_block2->beta1.weight: "
                                       r"checkpoint \(5, 512\), model \(32, 512\)"):
    convert.resunetk_params(wrong, model)
  with pytest.raises(ValueError, match=r"base.stft.conv_real.weight: checkpoint \(513, 1, 1024\), "
                                       r"model \(257, 1, 512\)"):
    convert.resunetk_params(state, ResUNetK(widths=WIDTHS, n_fft=512))
