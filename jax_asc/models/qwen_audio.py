"""The Qwen2-Audio audio encoder (= Whisper-large-v3's encoder), a frozen semantic teacher.

Reference (read, not copied): transformers 5.24 `models/qwen2_audio/modeling_qwen2_audio.py`
(`Qwen2AudioEncoder`, and the padding mask `Qwen2AudioModel` builds from
`feature_attention_mask`); facts in `../shared/reference/models_and_frontends.md` ("Qwen2-Audio
encoder") and report 004 §2.3.

  features (B, 128, 3000)  Whisper log-mels (`audio.whisper.log_mel`), 100 frames/s
  → GELU(Conv1d k3 p1) → GELU(Conv1d k3 s2 p1)         (B, 1500, 1280), 50 positions/s
  → + learned position table `embed_positions`
  → 32 pre-LN layers: x + Attn(LN(x)), x + fc2(GELU(fc1(LN(x))))
     (k_proj without bias, q scaled by head_dim^-0.5 after its projection, LayerNorm eps 1e-5,
      exact erf GELU; keys at or beyond len1 masked in every layer)
  → AvgPool1d(2, 2) over time → final LayerNorm        (B, 750, 1280), 25 frames/s

Padding, as `Qwen2AudioModel` does it: with L = valid frames of the log-mel (the sum of the
feature extractor's attention mask), len1 = (L − 1) // 2 + 1 positions after the strided conv
are attended to and len2 = (len1 − 2) // 2 + 1 output frames are valid (10 s: 1000 → 500 →
250). The HF encoder alone ignores this mask unless it is handed the 4-D one; ours takes
`valid_frames` and builds it.

`keep_positions` runs the layers on the first keep_positions conv positions only: keys ≥ len1 are
masked and everything but attention works per position, so the first len2 outputs are exactly
those of the full run whenever keep_positions ≥ max(len1) (a 10-s clip in a 30-s window: 500 of
1500 positions, a third of the cost). The convolutions see the features up to frame
2·keep_positions, so the kept positions are computed as in the full run.

Parameter names mirror HF's (`conv1`, `conv2`, `embed_positions`, `layers_{i}/self_attn/q_proj`,
…, `layer_norm`) so `convert.qwen_audio_params` maps a checkpoint one to one.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-5                  # torch.nn.LayerNorm's default
MASKED = -1e30                 # logits of masked keys (finite: an all-masked row stays finite)
_init = nn.initializers.normal(0.02)   # random init only; the teacher is always converted


def output_lengths(valid_frames) -> Tuple[Any, Any]:
  """(len1, len2) of `valid_frames` log-mel frames: len1 = (L − 1) // 2 + 1 positions after the
  strided conv (the attended keys), len2 = (len1 − 2) // 2 + 1 valid output frames (HF's
  `_get_feat_extract_output_lengths`). int32; NumPy in, NumPy out; JAX arrays give JAX arrays."""
  xp = jnp if isinstance(valid_frames, jax.Array) else np
  frames = xp.asarray(valid_frames).astype(xp.int32)
  len1 = (frames - 1) // 2 + 1
  len2 = (len1 - 2) // 2 + 1
  return len1.astype(xp.int32), len2.astype(xp.int32)


class QwenAudioAttention(nn.Module):
  """Multi-head self-attention with a key mask; softmax in float32."""
  d_model: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_valid: jax.Array) -> jax.Array:
    """x (B, N, d_model); key_valid (B, N) bool → (B, N, d_model)."""
    batch, tokens, _ = x.shape
    head_dim = self.d_model // self.num_heads
    dense = lambda name, bias=True: nn.Dense(self.d_model, use_bias=bias, kernel_init=_init,
                                             dtype=self.dtype, name=name)
    split = lambda t: t.reshape(batch, tokens, self.num_heads, head_dim)
    q = split(dense("q_proj")(x) * head_dim ** -0.5)     # scaled after the projection, as HF
    k = split(dense("k_proj", bias=False)(x))
    v = split(dense("v_proj")(x))
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k).astype(jnp.float32)
    logits = jnp.where(key_valid[:, None, None, :], logits, MASKED)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    y = jnp.einsum("bhnm,bmhd->bnhd", weights, v).reshape(batch, tokens, self.d_model)
    return dense("out_proj")(y)


class QwenAudioLayer(nn.Module):
  """One pre-LN encoder layer: x + Attn(LN(x)), then x + fc2(GELU(fc1(LN(x))))."""
  d_model: int
  num_heads: int
  ffn_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_valid: jax.Array) -> jax.Array:
    norm = lambda name: nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name=name)
    x = x + QwenAudioAttention(self.d_model, self.num_heads, self.dtype, name="self_attn")(
        norm("self_attn_layer_norm")(x), key_valid)
    y = nn.Dense(self.ffn_dim, kernel_init=_init, dtype=self.dtype,
                 name="fc1")(norm("final_layer_norm")(x))
    y = nn.Dense(self.d_model, kernel_init=_init, dtype=self.dtype,
                 name="fc2")(nn.gelu(y, approximate=False))
    return x + y


class QwenAudioEncoder(nn.Module):
  """Qwen2-Audio's audio tower; defaults are Qwen2-Audio-7B's (Whisper-large-v3, ≈ 635 M params).

  Attributes:
    num_mel_bins: mel bins of the input (128).
    d_model, num_layers, num_heads, ffn_dim: the transformer (1280, 32, 20, 5120).
    max_source_positions: positions after the strided conv (1500); the input must have
      2 · max_source_positions frames (3000, a 30-s Whisper chunk), as HF requires.
    dtype: computation dtype (parameters stay float32; softmax and the output are float32).

  Call: `encoder.apply({"params": p}, features, valid_frames=None, keep_positions=None)`
    features: (B, num_mel_bins, 2 · max_source_positions) Whisper log-mels.
    valid_frames: (B,) int, the frames holding the clip (`audio.whisper.log_mel`'s second
      output; may be traced); None: all frames.
    keep_positions: static even int ≤ max_source_positions, or None (all): run the layers on the
      first keep_positions conv positions only. The first len2 outputs equal the full run's
      when keep_positions ≥ max(len1) (not checked: valid_frames may be traced).
  Returns (hidden (B, P', d_model) float32 after the final LayerNorm, P' = keep_positions // 2
  or max_source_positions // 2; len2 (B,) int32 valid output frames, `output_lengths`).
  """
  num_mel_bins: int = 128
  d_model: int = 1280
  num_layers: int = 32
  num_heads: int = 20
  ffn_dim: int = 5120
  max_source_positions: int = 1500
  dtype: Any = jnp.float32

  output_lengths = staticmethod(output_lengths)

  @property
  def num_frames(self) -> int:
    """Input frames the encoder requires: 2 · max_source_positions (3000)."""
    return 2 * self.max_source_positions

  @nn.compact
  def __call__(self, features: jax.Array, valid_frames: Optional[jax.Array] = None,
               keep_positions: Optional[int] = None) -> Tuple[jax.Array, jax.Array]:
    if self.d_model % self.num_heads:
      raise ValueError(f"QwenAudioEncoder: num_heads={self.num_heads} does not divide "
                       f"d_model={self.d_model}")
    expected = (self.num_mel_bins, self.num_frames)
    if features.ndim != 3 or tuple(features.shape[1:]) != expected:
      raise ValueError(
          f"QwenAudioEncoder expects mel features of shape (B, {expected[0]}, {expected[1]}) "
          f"(num_mel_bins, 2 · max_source_positions), got {tuple(features.shape)}; pad or cut the "
          f"log-mels to {expected[1]} frames (a whole Whisper chunk)")
    batch = features.shape[0]
    total = self.max_source_positions
    if keep_positions is None:
      keep = total
    else:
      if not isinstance(keep_positions, (int, np.integer)) or isinstance(keep_positions, bool):
        raise ValueError(f"QwenAudioEncoder: keep_positions must be a static int, got "
                         f"{keep_positions!r}")
      keep = int(keep_positions)
      if keep <= 0 or keep % 2 or keep > total:
        raise ValueError(f"QwenAudioEncoder: keep_positions must be even and in 2 … "
                         f"max_source_positions={total}, got {keep}")
    if valid_frames is None:
      valid_frames = jnp.full((batch,), self.num_frames, jnp.int32)
    valid_frames = jnp.asarray(valid_frames)
    if valid_frames.shape != (batch,):
      raise ValueError(f"QwenAudioEncoder: valid_frames must have shape ({batch},), got "
                       f"{valid_frames.shape}")
    len1, len2 = output_lengths(valid_frames)

    # Conv position j reads conv1 positions 2j − 1 … 2j + 1, which read frames 2j − 2 … 2j + 2;
    # the first `keep` positions need frames < 2·keep + 1 (all of them for a full run).
    x = features[:, :, :min(self.num_frames, 2 * keep + 1)].transpose(0, 2, 1)  # (B, T, mels)
    conv = lambda stride, name: nn.Conv(self.d_model, (3,), (stride,), padding=((1, 1),),
                                        dtype=self.dtype, name=name)
    x = nn.gelu(conv(1, "conv1")(x.astype(self.dtype)), approximate=False)
    x = nn.gelu(conv(2, "conv2")(x), approximate=False)[:, :keep]                # (B, keep, d)
    positions = nn.Embed(total, self.d_model, embedding_init=_init, name="embed_positions")
    x = x + positions(jnp.arange(keep)).astype(self.dtype)[None]

    key_valid = jnp.arange(keep)[None, :] < len1[:, None]                          # (B, keep)
    for i in range(self.num_layers):
      x = QwenAudioLayer(self.d_model, self.num_heads, self.ffn_dim, self.dtype,
                         name=f"layers_{i}")(x, key_valid)

    pooled = keep // 2                                   # AvgPool1d(2, 2) over time
    x = x[:, :2 * pooled].reshape(batch, pooled, 2, self.d_model).mean(axis=2)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="layer_norm")(x)
    return x.astype(jnp.float32), len2
