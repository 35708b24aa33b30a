"""The exponential moving average of the student's parameters (`config.ema_decay`).

Kept in `TrainState.ema_params`, updated after every optimizer step, checkpointed with the state;
evaluation may use it (`evaluate.use_ema`), and a task may read it as a teacher
(`step.Task.ema_teacher`: report 004's PI-KD against an EMA of the student).
"""
from __future__ import annotations

from typing import Any

import jax


def update(ema_params: Any, params: Any, decay: float) -> Any:
  """θ_ema ← m·θ_ema + (1 − m)·θ (report 004 eq. 1; m = 0.999 typical).

  Args:
    ema_params: the average so far, a pytree of arrays.
    params: the parameters after this step, the same tree (any float dtype; cast to the
      average's).
    decay: the momentum m in [0, 1).

  Returns:
    The new average, the tree and dtypes of `ema_params`.
  """
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype),
                      ema_params, params)
