"""Device-aware feature alignment (report 000, DAFA): DCSL (eq. 3) and GDAL (eq. 4).

Both act on clip embeddings x (B, D) with integer device labels (B,) in [0, num_devices), over
the whole (global) batch: under `jax.jit` with a batch-sharded input they see every device's rows.

Report 000 does not spell out the scatter normalisations; we use Fisher's trace form, which makes
the ratio independent of batch size:
    μ_d = mean of device d's rows, μ_G = mean of all rows, N = number of rows,
    S_W = (1/N) Σ_i ‖x_i − μ_{d_i}‖²,   S_B = (1/N) Σ_d n_d ‖μ_d − μ_G‖²,
    DCSL = S_W / (S_B + ε),              GDAL = (1/|D|) Σ_{d present} ‖μ_d − μ_G‖².
Defined edge cases: devices absent from the batch do not count; with fewer than two devices
present there is no between-device structure and DCSL is 0 (GDAL is 0 there too); a device with a
single row has zero within-scatter. Gradients stay finite in all of these.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def _device_statistics(x, devices, num_devices, mask):
  x = x.astype(jnp.float32)
  weights = jnp.ones(x.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
  one_hot = jax.nn.one_hot(devices, num_devices, dtype=jnp.float32) * weights[:, None]  # (B, D)
  counts = one_hot.sum(axis=0)                                                      # (n_dev,)
  present = counts > 0
  centroids = (one_hot.T @ x) / jnp.maximum(counts, 1.0)[:, None]                  # (n_dev, D)
  total = jnp.maximum(weights.sum(), 1.0)
  global_centroid = (weights @ x) / total
  return x, weights, one_hot, counts, present, centroids, global_centroid, total


def dcsl_loss(embeddings: jax.Array, devices: jax.Array, num_devices: int, *,
              eps: float = 1e-6, mask: Optional[jax.Array] = None) -> jax.Array:
  """Device cohesion-separation loss S_W / (S_B + ε) (report 000 eq. 3). Scalar, float32."""
  x, weights, one_hot, counts, present, centroids, mu_g, total = _device_statistics(
      embeddings, devices, num_devices, mask)
  own_centroid = one_hot @ centroids / jnp.maximum(one_hot.sum(axis=1), 1e-12)[:, None]
  s_w = jnp.sum(weights * jnp.sum(jnp.square(x - own_centroid), axis=-1)) / total
  s_b = jnp.sum(counts * jnp.sum(jnp.square(centroids - mu_g), axis=-1)) / total
  several = jnp.sum(present) >= 2
  return jnp.where(several, s_w / (jnp.where(several, s_b, 1.0) + eps), 0.0)


def gdal_loss(embeddings: jax.Array, devices: jax.Array, num_devices: int, *,
              mask: Optional[jax.Array] = None) -> jax.Array:
  """Global device alignment loss: mean over present devices of ‖μ_d − μ_G‖² (report 000 eq. 4)."""
  _, _, _, _, present, centroids, mu_g, _ = _device_statistics(
      embeddings, devices, num_devices, mask)
  distances = jnp.sum(jnp.square(centroids - mu_g), axis=-1)
  return jnp.sum(jnp.where(present, distances, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def dafa_objective(ce: jax.Array, embeddings, devices, num_devices: int, *,
                   dcsl_weight: float = 0.01, gdal_weight: float = 0.01, eps: float = 1e-6,
                   mask=None):
  """Report 000 eq. 2: L_CE + λ_dcsl·L_DCSL + λ_gdal·L_GDAL (λ = 0.01 each in the report).

  Returns (loss, {"ce", "dcsl", "gdal"}).
  """
  dcsl = dcsl_loss(embeddings, devices, num_devices, eps=eps, mask=mask)
  gdal = gdal_loss(embeddings, devices, num_devices, mask=mask)
  return ce + dcsl_weight * dcsl + gdal_weight * gdal, {"ce": ce, "dcsl": dcsl, "gdal": gdal}
