"""M2D: the Masked Modeling Duo audio encoder (Niizumi et al., 2024) and report 004's tagger on it.

References (read, not copied): nttcslab/m2d@f0c4128 `examples/portable_m2d.py` (`LocalViT`,
`PortableM2D.encode_lms`), nttcslab/dcase2026_task4_baseline `src/models/m2dat/m2dat.py` (1c)
and `m2dat_spatial.py` (4c); facts in `../shared/reference/models_and_frontends.md` ("M2D
encoder", "Task-4 tagger head") and report 004 §2.2.

`M2DEncoder` is timm's ViT-B as M2D uses it (in_chans 1, patch 16×16 stride 16, pre-LN blocks
with LayerNorm eps 1e-6, qkv bias, exact GELU; `passt.Block`). One chunk of at most
`input_size[1]` frames is encoded as `LocalViT.forward_encoder`:
  patches (B, F', T', D), flattened f-major (token f·T' + t, as torch's `flatten(2)`)
  + pos_embed[:, 1:] (its time columns cut to T' for a short chunk)
  prepend cls_token + pos_embed[:, :1] → blocks → LayerNorm → drop the cls token.
A longer input is cut into chunks of `input_size[1]` frames (1001 for 10 s at 32 kHz: 62 patch
columns, the chunk's last 9 frames fall outside them and are dropped, as in the reference). The
remainder is zero-padded to a whole number of patches (the reference's `pad_frames`) and cut to
one chunk's frames (a remainder of 993…1000 frames padded to 1008 gives 62 columns, not 63); a
10-s input needs no padding. The chunks' token sequences are concatenated in time. (The T4
baseline's copy of portable_m2d pads the whole input to a multiple of 16 frames instead; both
agree on 10-s inputs.)

Parameter names follow timm's (`patch_embed`, `pos_embed`, `cls_token`, `blocks_{i}`, `norm`),
so `convert.m2d_params` maps an official checkpoint one to one.

The input is the normalised log-mel, `(log_mel − mean) / std` with the checkpoint's `norm_stats`
(`audio.frontends.m2d(mean, std)`), (B, n_mels, frames) or (B, n_mels, frames, 1).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_asc.models.layers import adaptive_avg_pool_time
from jax_asc.models.passt import Block, torch_conv_default, trunc_normal_02
from jax_asc.models.track_head import TrackHead, concatenate_channels, mask_spatial_tokens


class M2DEncoder(nn.Module):
  """M2D's ViT encoder; defaults are the 32-kHz AS-FT checkpoint of report 004 (ViT-B, 80×1001).

  Attributes:
    input_size: (mel bins, frames) of one chunk; the positional grid is input_size // patch_size
      (5 × 62 for 80 × 1001).
    flat_features: the layout of the output tokens of a chunk with a T'-column grid:
      True: (B, F'·T', D), every patch a token, f-major (token f·T' + t);
      False: (B, T', F'·D), one token per time column, its F' patch embeddings side by side
        (frequency-major, `rearrange('b (f t) d -> b t (f d)')`).
      Chunks are concatenated along the token axis. The AS-FT checkpoints use True
      (`convert.m2d_params` reports which a checkpoint needs).
    dtype: computation dtype (parameters stay float32).

  Call: `encoder(x, train=False, return_hidden=())` → tokens, or with `return_hidden` a tuple
  (tokens, {k: tokens after block k}) for 1-based block numbers k (block k is `blocks_{k-1}`;
  report 004 attaches its auxiliary heads to blocks 9 and 10 of 12). Hidden tokens are laid out
  as the output (cls dropped, chunks concatenated) but are not passed through the final norm.
  `train` changes nothing (the reference has no dropout); it is there for the common interface.
  """
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  patch_size: int = 16
  input_size: Tuple[int, int] = (80, 1001)
  flat_features: bool = True
  dtype: Any = jnp.float32

  @property
  def grid_size(self) -> Tuple[int, int]:
    """Positional-embedding grid (F', T'): input_size // patch_size."""
    return self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size

  @property
  def feature_dim(self) -> int:
    """Width of one output token: D, or F'·D without flat features."""
    return self.embed_dim if self.flat_features else self.grid_size[0] * self.embed_dim

  def num_tokens(self, frames: int) -> int:
    """Number of output tokens for an input of `frames` frames."""
    unit, p = self.input_size[1], self.patch_size
    full, rest = divmod(frames, unit)
    columns = full * (unit // p) + min(-(-rest // p), unit // p)   # remainder: padded, then cut
    return columns * (self.grid_size[0] if self.flat_features else 1)

  def time_major(self, tokens: jax.Array, frames: int) -> jax.Array:
    """(B, num_tokens(frames), feature_dim) output tokens → (B, T', F'·D): one token per time
    column, in time order, its F' patch embeddings side by side (frequency-major, as
    `flat_features=False` lays them out; returned as is then). T' counts the columns of every
    chunk."""
    if not self.flat_features:
      return tokens
    grid_f, unit_columns = self.grid_size
    batch, dim = tokens.shape[0], tokens.shape[-1]
    remaining, start, pieces = self.num_tokens(frames) // grid_f, 0, []
    while remaining > 0:      # full chunks first, then the remainder's (fewer) columns
      columns = min(unit_columns, remaining)
      chunk = tokens[:, start:start + grid_f * columns].reshape(batch, grid_f, columns, dim)
      pieces.append(chunk.transpose(0, 2, 1, 3).reshape(batch, columns, grid_f * dim))
      start, remaining = start + grid_f * columns, remaining - columns
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_hidden: Sequence[int] = ()):
    del train   # no dropout or drop-path in the reference encoder
    if x.ndim == 4:
      if x.shape[-1] != 1:
        raise ValueError(f"M2DEncoder takes (B, n_mels, frames[, 1]) log-mels, got {x.shape}")
      x = x[..., 0]
    if x.ndim != 3:
      raise ValueError(f"M2DEncoder takes (B, n_mels, frames[, 1]) log-mels, got {x.shape}")
    hidden_blocks = tuple(sorted(set(int(k) for k in return_hidden)))
    if any(not 1 <= k <= self.depth for k in hidden_blocks):
      raise ValueError(f"return_hidden blocks are numbered 1..{self.depth}, got {return_hidden}")
    grid_f, grid_t = self.grid_size
    if grid_f == 0 or grid_t == 0:
      raise ValueError(f"M2DEncoder: input_size {tuple(self.input_size)} holds no "
                       f"{self.patch_size}×{self.patch_size} patch")
    batch, n_mels, frames = x.shape
    if n_mels // self.patch_size != grid_f:
      raise ValueError(f"M2DEncoder: {n_mels} mel bins give {n_mels // self.patch_size} patch "
                       f"rows; the positional grid has {grid_f} (input_size={self.input_size})")
    if frames == 0:
      raise ValueError("M2DEncoder: empty input (0 frames)")
    dim, p, unit = self.embed_dim, self.patch_size, self.input_size[1]

    patch_embed = nn.Conv(dim, (p, p), (p, p), padding="VALID", kernel_init=torch_conv_default,
                          dtype=self.dtype, name="patch_embed")
    pos_embed = self.param("pos_embed", trunc_normal_02, (1, 1 + grid_f * grid_t, dim))
    cls_token = self.param("cls_token", trunc_normal_02, (1, 1, dim))
    blocks = [Block(dim, self.num_heads, self.mlp_ratio, self.dtype, name=f"blocks_{i}")
              for i in range(self.depth)]
    final_norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")

    def encode_chunk(chunk):
      """(n, F, frames ≤ unit) → {block k: (n, F', t, D)} and the normed output under 0."""
      y = patch_embed(chunk[..., None].astype(self.dtype))   # (n, F', t, D)
      n, _, t, _ = y.shape
      pos = pos_embed[:, 1:].reshape(1, grid_f, grid_t, dim)[:, :, :t]
      y = (y + pos.astype(self.dtype)).reshape(n, grid_f * t, dim)
      cls = (cls_token + pos_embed[:, :1]).astype(self.dtype)
      y = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, dim)), y], axis=1)
      out = {}
      for k, block in enumerate(blocks, start=1):
        y = block(y)
        if k in hidden_blocks:
          out[k] = y[:, 1:].reshape(n, grid_f, t, dim)
      out[0] = final_norm(y)[:, 1:].reshape(n, grid_f, t, dim)
      return out

    # Zero-pad the remainder to whole patches (`pad_frames` in portable_m2d.encode_lms).
    full, rest = divmod(frames, unit)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, (p - rest % p) % p)))
    pieces = []   # per chunk group: {k: (B, n_chunks, F', t, D)}
    if full:      # the whole chunks share one encoder pass, stacked along the batch axis
      chunks = x[..., :full * unit].reshape(batch, n_mels, full, unit).transpose(0, 2, 1, 3)
      out = encode_chunk(chunks.reshape(batch * full, n_mels, unit))
      pieces.append({k: v.reshape(batch, full, *v.shape[1:]) for k, v in out.items()})
    if rest:      # cut to one chunk, as the reference's slice does when padding overshoots it
      out = encode_chunk(x[..., full * unit:(full + 1) * unit])
      pieces.append({k: v[:, None] for k, v in out.items()})

    def arrange(k):
      seqs = []
      for piece in pieces:
        v = piece[k]                                  # (B, c, F', t, D)
        b, c, f, t, d = v.shape
        if self.flat_features:                        # each chunk f-major, chunks one after another
          seqs.append(v.reshape(b, c * f * t, d))
        else:                                         # (B, c·t, F'·D)
          seqs.append(v.transpose(0, 1, 3, 2, 4).reshape(b, c * t, f * d))
      return seqs[0] if len(seqs) == 1 else jnp.concatenate(seqs, axis=1)

    tokens = arrange(0)
    if not hidden_blocks:
      return tokens
    return tokens, {k: arrange(k) for k in hidden_blocks}


class M2DTagger(nn.Module):
  """Report 004's tagger: the M2D encoder and `TrackHead` (T4 baseline's M2dAt / M2dAtSpatial).

  Input: normalised log-mels (B, C, n_mels, frames), C = 1 for "1c" (the mixture's reference
  channel) or 4 for "4c" (the FOA channels); (B, n_mels, frames) is read as C = 1. Each channel
  is encoded alone by the one shared encoder; the channels' tokens are joined per token
  (`concatenate_channels`, channel-major: D_total = C·feature_dim) and the head sees their mean.

  Training only (train=True and spatial_mask_rate > 0): each channel's token is zeroed with
  probability `spatial_mask_rate` (report 004: 0.3 for 4c; `mask_spatial_tokens`, rng stream
  "spatial_mask"); the same mask applies to the auxiliary heads' tokens.

  `aux_blocks`: 1-based encoder blocks with an auxiliary TrackHead each (report 004 eq. 3's
  L_aux; blocks 9 and 10). Their tokens are the block outputs without the final norm (the head's
  BatchNorm normalises them).

  `semantic_dim` > 0 (report 004 §2.3, semantic distillation): the reference channel's tokens,
  before spatial masking, in time order (one per time column: its F' patch embeddings side by
  side, `M2DEncoder.time_major`), average-pooled to `semantic_bins` time bins and projected to
  the teacher's width by `semantic_projector` (a Dense over F'·D: projecting then pooling is the
  same affine map, pooling first is cheaper). A training-only part: stage inference_checkpoint
  drops it.

  Output: logits (B, num_tracks, num_classes) float32; with `return_features=True` a dict
  {"logits", "aux_logits": {block: (B, K, classes)}, "tokens": (B, N, C·feature_dim)[,
  "semantic": (B, semantic_bins, semantic_dim)]}.
  Variables: params {"encoder" (M2DEncoder, loadable from `convert.m2d_params`), "head",
  "aux_head_{k}"[, "semantic_projector"]}, batch_stats of the heads' BatchNorm (updated when
  train=True).
  """
  channels: int = 1
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  patch_size: int = 16
  input_size: Tuple[int, int] = (80, 1001)
  flat_features: bool = True
  num_tracks: int = 3
  num_classes: int = 19
  track_input_dim: int = 1024
  track_hidden_dim: Optional[int] = 512
  aux_blocks: Tuple[int, ...] = (9, 10)
  spatial_mask_rate: float = 0.0
  semantic_dim: int = 0
  semantic_bins: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    if x.ndim == 3:
      x = x[:, None]
    if x.ndim != 4 or x.shape[1] != self.channels:
      raise ValueError(f"M2DTagger(channels={self.channels}) takes (B, {self.channels}, n_mels, "
                       f"frames) log-mels, got {x.shape}")
    batch, channels = x.shape[:2]
    encoder = M2DEncoder(self.embed_dim, self.depth, self.num_heads, self.mlp_ratio,
                         self.patch_size, tuple(self.input_size), self.flat_features, self.dtype,
                         name="encoder")
    out = encoder(x.reshape(batch * channels, *x.shape[2:]), train=train,
                  return_hidden=self.aux_blocks)
    tokens, hidden = out if self.aux_blocks else (out, {})
    masking = train and self.spatial_mask_rate > 0
    key = self.make_rng("spatial_mask") if masking else None

    def join(t):   # (B·C, N, D) → (B, N, C·D), masked in training
      t = t.reshape(batch, channels, *t.shape[1:])
      if masking:
        t = mask_spatial_tokens(key, t, self.spatial_mask_rate)
      return concatenate_channels(t)

    def head(name):
      return TrackHead(self.num_tracks, self.num_classes, self.track_input_dim,
                       self.track_hidden_dim, name=name)

    semantic = None
    if self.semantic_dim > 0:
      reference = tokens.reshape(batch, channels, *tokens.shape[1:])[:, 0]
      columns = encoder.time_major(reference, x.shape[-1])         # (B, T', F'·D)
      pooled = adaptive_avg_pool_time(columns, self.semantic_bins)
      semantic = nn.Dense(self.semantic_dim, dtype=self.dtype,
                          name="semantic_projector")(pooled).astype(jnp.float32)
    tokens = join(tokens)
    logits = head("head")(tokens, train=train)
    # The auxiliary heads always run, so init makes their variables and training updates their
    # BatchNorm statistics whether or not the caller asks for their logits.
    aux = {k: head(f"aux_head_{k}")(join(hidden[k]), train=train) for k in self.aux_blocks}
    if not return_features:
      return logits
    out = {"logits": logits, "aux_logits": aux, "tokens": tokens}
    if semantic is not None:
      out["semantic"] = semantic
    return out
