"""Heads for distillation and contrastive learning: cosine classifier, projection, feature adapter."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from jax_asc.models.layers import PointwiseConv


class CosineClassifier(nn.Module):
  """Cosine-similarity classifier: γ · ⟨x/‖x‖, w_c/‖w_c‖⟩. (B, D) → (B, n_classes)."""
  n_classes: int
  scale: float = 10.0   # γ
  eps: float = 1e-8

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.n_classes),
                        jnp.float32)
    x = x.astype(jnp.float32)
    x = x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + self.eps)
    w = kernel / (jnp.linalg.norm(kernel, axis=0, keepdims=True) + self.eps)
    return self.scale * (x @ w)


class ProjectionHead(nn.Module):
  """Linear (or MLP with one hidden ReLU layer) projection, then L2 normalisation (eps-guarded).

  CRD's embed head is `Linear(dim_in, 128)` + normalise (RepDistiller); SupCon's is
  `Linear(D, D) → ReLU → Linear(D, 128)` + normalise (`hidden = D`). (B, D_in) → (B, features).
  """
  features: int = 128
  hidden: Optional[int] = None
  eps: float = 1e-12

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    if self.hidden:
      x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    x = nn.Dense(self.features, name="out")(x)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), self.eps)


class FeatureAdapter(nn.Module):
  """1×1 convolution mapping a feature map's channels (B, H, W, C_in) → (B, H, W, features):
  the trainable adapter of DFM (report 001 eq. 4)."""
  features: int

  @nn.compact
  def __call__(self, x):
    return PointwiseConv(self.features, name="conv")(x)
