"""orbax checkpoints of a run: the latest (for resuming) and the best-k by a chosen metric.

Layout: `<workdir>/checkpoints/latest/<step>/` (max_to_keep 1),
`<workdir>/checkpoints/best/<step>/` (the k best by `best_metric`) and
`<workdir>/checkpoints/soup/<step>/` (the weight average of the best k, stage `soup`). A save is only visible once
orbax has finalised it, so a run killed while saving resumes from the previous checkpoint.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  def __init__(self, workdir: str, *, best_metric: str, best_mode: str, keep_best: int):
    if best_mode not in ("max", "min"):
      raise ValueError(f"checkpoint.best_mode must be 'max' or 'min', got {best_mode!r}")
    root = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.best_metric = best_metric

    def options(name, **kwargs):
      # Each manager's own barrier names: on several hosts the latest and the best checkpoint
      # of one step are saved concurrently, and orbax's barriers (`_async_write_complete.<step>`)
      # would otherwise collide ("Barrier … is already ongoing") and stall the run.
      return ocp.CheckpointManagerOptions(
          create=True, multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=f"jax_asc_{name}"), **kwargs)

    self.latest = ocp.CheckpointManager(os.path.join(root, "latest"),
                                        options=options("latest", max_to_keep=1))
    self.best = None
    if keep_best > 0:
      self.best = ocp.CheckpointManager(
          os.path.join(root, "best"),
          options=options("best", max_to_keep=keep_best, best_mode=best_mode,
                          best_fn=lambda metrics: metrics[best_metric]))
    self.soup = ocp.CheckpointManager(os.path.join(root, "soup"),
                                      options=options("soup", max_to_keep=1))

  @staticmethod
  def _args(state, meta):
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

  def save_latest(self, step: int, state, meta: dict) -> None:
    self.latest.save(step, args=self._args(state, meta), force=True)

  def save_best(self, step: int, state, meta: dict, metrics: dict) -> None:
    if self.best is None:
      return
    if self.best_metric not in metrics:
      raise KeyError(f"checkpoint.best_metric {self.best_metric!r} is not among the evaluation "
                     f"metrics {sorted(metrics)}")
    metrics = {k: float(v) for k, v in metrics.items()}
    self.best.save(step, args=self._args(state, dict(meta, metrics=metrics)), metrics=metrics,
                   force=True)

  def save_soup(self, step: int, state, meta: dict) -> None:
    """Writes the soup, replacing an earlier soup of the same step (stage soup run again)."""
    if step in self.soup.all_steps():
      self.soup.delete(step)
    self.soup.save(step, args=self._args(state, meta), force=True)
    self.soup.wait_until_finished()

  def _manager_step(self, which: str, step: Optional[int]):
    manager = {"latest": self.latest, "best": self.best, "soup": self.soup}.get(which)
    if manager is None:
      raise ValueError(f"no {which!r} checkpoints for this run (which: latest, best or soup)")
    if step is None:
      step = manager.best_step() if which == "best" else manager.latest_step()
    return manager, step

  def restore(self, template, which: str = "latest", step: Optional[int] = None):
    """(state, meta) of the latest, the best, the soup or a given step; None when there is none."""
    manager, step = self._manager_step(which, step)
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_variables(self, which: str = "best", step: Optional[int] = None):
    """({"params", "batch_stats"} as saved, meta) without a template (e.g. a frozen teacher of
    another run); None when there is no such checkpoint.

    Arrays come back with the shardings they were saved with where the current devices can hold
    them, else replicated over the mesh of all current devices: a checkpoint written by many
    hosts restores on one machine (prediction, export, a teacher for a smaller run)."""
    from jax_asc.train import mesh as mesh_lib
    manager, step = self._manager_step(which, step)
    if step is None:
      return None
    everywhere = mesh_lib.replicated(mesh_lib.make_mesh())
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(fallback_sharding=everywhere),
        meta=ocp.args.JsonRestore()))
    state = restored["state"]
    variables = {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
    if state.get("ema_params") is not None:
      variables["ema_params"] = state["ema_params"]
    return variables, restored["meta"]

  def best_steps(self):
    return [] if self.best is None else list(self.best.all_steps())

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.soup.close()
    self.latest.close()
    if self.best is not None:
      self.best.close()
