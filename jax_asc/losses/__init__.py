"""Pure, jittable loss functions (arrays in, scalars out), computed in float32.

| module | losses |
|---|---|
| `classification` | cross-entropy with hard, soft (mixup) and smoothed labels |
| `distillation` | Hinton KD (two reductions), teacher ensembles, report 000 eq. 1, 001 eq. 3, 003 eq. 4 |
| `dafa` | DCSL, GDAL, report 000 eq. 2 |
| `features` | DFM, SSFM (report 001 eq. 4–5) |
| `similarity` | linear CKA (biased, debiased, minibatch), cosine distance, report 004 eq. 4 |
| `contrastive` | SupCon, soft SupCon (report 003 eq. 1), InfoNCE, CRD memory bank (eq. 3) |
| `pit` | PIT cross-entropy, PI-KD (report 004 eq. 2), SD objective (eq. 3), EMA (eq. 1) |
| `separation` | SNR, class-aware PIT −SNR (report 004's separator) |

`registry` names the terms (`config.loss.terms = {"ce": 0.05, "kd": 1.0, "ssfm": 0.1}`, each with
its settings under `config.loss.<term>`) and forms the weighted sum.
"""
