"""Losses with batch statistics see the global batch when it is sharded over 8 devices.

Runs in a subprocess with `--xla_force_host_platform_device_count=8`: each loss and its gradient,
jitted with the batch split over an 8-device mesh, must equal the single-device result.
"""
import os

import cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import os, sys
# 8 CPU devices (tests/cpu_devices.py).
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, REPO)
from jax_asc.losses import contrastive, dafa, features, similarity, distillation, pit
from jax_asc.train import mesh as mesh_lib
assert jax.device_count() == 8
B = 16
k = jax.random.split(jax.random.key(0), 8)
emb = jax.random.normal(k[0], (B, 12))
teacher = jax.random.normal(k[1], (B, 12))
devices = jnp.array([0, 1, 2, 3] * 4)
labels = jnp.array([0, 1, 2, 3, 4] * 3 + [0])
targets = jax.nn.one_hot(labels, 5) * 0.7 + jax.nn.one_hot(jnp.roll(labels, 1), 5) * 0.3
fmap_s = jax.random.normal(k[2], (B, 4, 3, 6))
fmap_t = jax.random.normal(k[3], (B, 8, 6, 6))
memory = contrastive.crd_memory_init(k[4], 64, 12)
index = jnp.arange(B) * 3
cidx = contrastive.sample_contrast_indices(k[5], index, 64, 20)
tags = jax.random.normal(k[6], (B, 3, 7))
tag_teacher = jax.random.normal(k[7], (B, 3, 7))

cases = {
  "dcsl": (lambda e: dafa.dcsl_loss(e, devices, 4), emb),
  "gdal": (lambda e: dafa.gdal_loss(e, devices, 4), emb),
  "cka": (lambda e: similarity.linear_cka(e, teacher), emb),
  "cka_debiased": (lambda e: similarity.linear_cka(e, teacher, debiased=True), emb),
  "supcon": (lambda e: contrastive.supcon_loss(e[:, None], labels, temperature=0.1), emb),
  "soft_supcon": (lambda e: contrastive.soft_supcon_loss(e, targets)[0], emb),
  "info_nce": (lambda e: contrastive.info_nce_loss(e, teacher), emb),
  "crd": (lambda e: contrastive.crd_loss(memory, e, teacher, index, cidx)[0], emb),
  "ssfm": (lambda f: features.ssfm_loss(f, fmap_t), fmap_s),
  "kd": (lambda e: distillation.kd_loss(e, teacher, 2.0), emb),
  "pi_kd": (lambda z: pit.pi_kd_loss(z, tag_teacher)[0], tags),
}
single = mesh_lib.make_mesh(jax.devices()[:1])
full = mesh_lib.make_mesh(jax.devices())
worst = {}
for name, (fn, x) in cases.items():
  results = []
  for mesh in (single, full):
    sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    value, grad = jax.jit(jax.value_and_grad(fn))(sharded)
    results.append((float(value), np.asarray(grad)))
  (v1, g1), (v8, g8) = results
  worst[name] = max(abs(v1 - v8) / (abs(v1) + 1e-6),
                    float(np.max(np.abs(g1 - g8)) / (np.max(np.abs(g1)) + 1e-12)))
print("WORST", worst)
"""


def test_batch_statistic_losses_equal_on_1_and_8_devices():
  out = cpu_devices.run_script(SCRIPT.replace("REPO", repr(REPO)))
  worst = eval(out.split("WORST", 1)[1])   # {name: relative difference}
  assert len(worst) == 11
  bad = {k: v for k, v in worst.items() if not v < 1e-4}
  assert not bad, bad
