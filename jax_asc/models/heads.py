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


class WithFeatureAdapters(nn.Module):
  """A student plus the trainable 1×1 adapters of DFM (report 001 eq. 4), one per matched stage.

  adapters: (student stage, teacher channels, student channels) triples. In training the step
  passes `teacher_features` {student stage: teacher map}; the output dict then holds
  `adapted` {student stage: Adapter(teacher map)}. Without them it is the plain student.
  Parameters: `student/…` and `adapter_<stage>/conv/kernel`.
  """
  student: nn.Module
  adapters: tuple

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False,
               teacher_features=None):
    modules = {stage: FeatureAdapter(out_ch, name=f"adapter_{stage}")
               for stage, _, out_ch in self.adapters}
    out = self.student(x, train=train, return_features=return_features)
    if self.is_initializing():   # create the adapters' parameters with their known shapes
      for stage, in_ch, _ in self.adapters:
        modules[stage](jnp.zeros((1, 1, 1, in_ch), jnp.float32))
    if teacher_features is None or not return_features:
      return out
    return dict(out, adapted={stage: modules[stage](teacher_features[stage])
                              for stage in modules})


class WithProjection(nn.Module):
  """A model plus a trainable projection head on its `source` output: the student's CRD head of
  report 003 §3 (a 2-layer MLP to the teacher's 128-d projection space; `hidden` 0 = the
  source's width, None = one linear layer as in the original CRD).

  With `return_features` the output dict gains `projected` (B, features), L2-normalised.
  Parameters: `student/…` and `projection/{hidden,out}/…`.
  """
  student: nn.Module
  features: int = 128
  hidden: Optional[int] = 0
  source: str = "embedding"

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    out = self.student(x, train=train, return_features=True)
    if not (return_features or self.is_initializing()):
      return out["logits"]
    source = out[self.source]
    hidden = source.shape[-1] if self.hidden == 0 else self.hidden
    projected = ProjectionHead(self.features, hidden=hidden, name="projection")(source)
    return dict(out, projected=projected) if return_features else out["logits"]
