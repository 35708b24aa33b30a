"""The PyTorch side of `make bench`: CP-Mobile and its log-mel frontend in plain torch.nn.

The same architecture as `jax_asc.models.cp_mobile.CPMobile` (and CPJKU's `models/net.py` /
`models/cp_mobile_clean.py`): Conv2d + BatchNorm2d + ReLU stems, inverted residual blocks
(1×1 expand, 3×3 depthwise, 1×1 project, identity or AvgPool2d(3, s, 1) shortcut, optional GRN),
1×1 conv + BatchNorm2d head and global average pooling; the same parameter count (61,148 for
the DCASE25 settings, 126,952 for DCASE23). Written here, not imported, so that the benchmark
needs only `torch` (2.13.0 CPU).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * value else new


class ConvNormAct(nn.Sequential):
  def __init__(self, cin, cout, kernel=3, stride=1, groups=1, activation=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if activation:
      layers.append(nn.ReLU(inplace=True))
    super().__init__(*layers)


class GRN(nn.Module):
  def __init__(self):
    super().__init__()
    self.gamma = nn.Parameter(torch.zeros(1))
    self.beta = nn.Parameter(torch.zeros(1))

  def forward(self, x):
    gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)
    nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
    return self.gamma * (x * nx) + self.beta + x


class Block(nn.Module):
  def __init__(self, cin, cout, expansion, stride, grn):
    super().__init__()
    self.expand = ConvNormAct(cin, expansion, 1)
    self.depthwise = ConvNormAct(expansion, expansion, 3, stride, groups=expansion)
    self.project = ConvNormAct(expansion, cout, 1, activation=False)
    self.shortcut = None
    if cin == cout:
      self.shortcut = (nn.Identity() if tuple(stride) == (1, 1) else
                       nn.AvgPool2d(3, stride, padding=1, count_include_pad=True))
    self.grn = GRN() if grn else None

  def forward(self, x):
    y = self.project(self.depthwise(self.expand(x)))
    if self.shortcut is not None:
      y = y + self.shortcut(x)
    if self.grn is not None:
      y = self.grn(y)
    return torch.relu(y)


def init_weights(module):
  """The references' `_init_weights`: conv kaiming_normal_(fan_out) (zero bias), BatchNorm 1 / 0,
  Linear N(0, 0.01) (zero bias). GRN keeps its zeros."""
  if isinstance(module, nn.Conv2d):
    nn.init.kaiming_normal_(module.weight, mode="fan_out")
    if module.bias is not None:
      nn.init.zeros_(module.bias)
  elif isinstance(module, nn.BatchNorm2d):
    nn.init.ones_(module.weight)
    nn.init.zeros_(module.bias)
  elif isinstance(module, nn.Linear):
    nn.init.normal_(module.weight, 0, 0.01)
    if module.bias is not None:
      nn.init.zeros_(module.bias)


class CPMobile(nn.Module):
  def __init__(self, n_classes=10, base_channels=32, channels_multiplier=1.8, expansion_rate=2.1,
               n_blocks=(3, 2, 1), strides=((1, 1), (1, 1), (1, 2), (2, 1), (1, 1), (1, 1)),
               use_grn=False):
    super().__init__()
    base = make_divisible(base_channels)
    channels = [base] + [make_divisible(base * channels_multiplier ** i)
                         for i in range(len(n_blocks))]
    self.stem = nn.Sequential(ConvNormAct(1, channels[0] // 4, 3, 2),
                              ConvNormAct(channels[0] // 4, channels[0], 3, 2))
    blocks, cin, index = [], channels[0], 0
    for stage, count in enumerate(n_blocks):
      for _ in range(count):
        cout = channels[stage + 1]
        blocks.append(Block(cin, cout, make_divisible(cin * expansion_rate), strides[index],
                            use_grn))
        cin, index = cout, index + 1
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Sequential(nn.Conv2d(cin, n_classes, 1, bias=False), nn.BatchNorm2d(n_classes))
    self.apply(init_weights)

  def forward(self, x):                   # (B, 1, mels, frames)
    x = self.head(self.blocks(self.stem(x)))
    return x.mean(dim=(2, 3))


VARIANTS = {
    "dcase25": dict(),
    "dcase23": dict(channels_multiplier=2.3, expansion_rate=3.0, use_grn=True,
                    strides=((1, 1), (2, 2), (1, 1), (2, 1), (1, 1), (1, 1))),
}


class LogMel(nn.Module):
  """torch.stft (centred, reflect) → power → mel matmul → log(x + 1e-5), as the DCASE25 baseline."""

  def __init__(self, filterbank, n_fft=4096, win_length=3072, hop_length=500, periodic=True):
    super().__init__()
    self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
    self.register_buffer("window", torch.hann_window(win_length, periodic=periodic))
    self.register_buffer("filterbank", torch.as_tensor(filterbank, dtype=torch.float32))

  def forward(self, waveform):             # (B, samples) → (B, mels, frames)
    spec = torch.stft(waveform, self.n_fft, self.hop_length, self.win_length, self.window,
                      center=True, pad_mode="reflect", return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2
    return torch.log(torch.matmul(self.filterbank.T, power) + 1e-5)


def cosine_with_warmup(warmup: int, total: int):
  """`transformers.get_cosine_schedule_with_warmup`'s factor of the step count (a `LambdaLR`
  lambda): linear 0 → 1 over `warmup` steps, then half a cosine to 0 at `total`."""
  def factor(step):
    if step < warmup:
      return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
  return factor


def count_parameters(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def train_step_fn(model, frontend, batch: int, samples: int, lr: float = 1e-3):
  """A closure running one AdamW step (frontend + forward + CE + backward + update)."""
  optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
  generator = torch.Generator().manual_seed(0)
  waveform = torch.randn(batch, samples, generator=generator) * 0.1
  labels = torch.randint(0, 10, (batch,), generator=generator)

  def step():
    with torch.no_grad():
      x = frontend(waveform).unsqueeze(1)
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), labels)
    loss.backward()
    optimizer.step()
    return loss.item()
  return step, waveform


def model_step_fn(model, features, lr: float = 1e-3):
  """A closure running one AdamW step of the model alone on fixed log-mel `features`
  (B, 1, mels, frames): the reference's train-step figure (no frontend)."""
  optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
  labels = torch.arange(features.shape[0]) % 10

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(features), labels)
    loss.backward()
    optimizer.step()
    return loss.item()
  return step


if __name__ == "__main__":
  for name, kwargs in VARIANTS.items():
    print(name, count_parameters(CPMobile(**kwargs)))
