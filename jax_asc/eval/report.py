"""Evaluation reports written to the workdir: JSON, a Markdown table and a confusion-matrix PNG."""
from __future__ import annotations

import json
import os
from typing import Dict, Sequence

import numpy as np


def markdown_table(metrics: Dict, title: str) -> str:
  """Per-device table (devices, groups, overall) and per-class accuracies, in percent."""
  devices = list(metrics["per_device"])
  groups = list(metrics["device_groups"])
  head = devices + [f"{g}" for g in groups] + ["acc", "macro acc", "log loss"]
  values = ([f"{100 * metrics['per_device'][d]:.2f}" for d in devices] +
            [f"{100 * metrics['device_groups'][g]:.2f}" for g in groups] +
            [f"{100 * metrics['accuracy']:.2f}", f"{100 * metrics['macro_accuracy']:.2f}",
             f"{metrics['log_loss']:.3f}"])
  lines = [f"### {title} ({metrics['count']} clips)", "",
           "| " + " | ".join(head) + " |", "|" + "---:|" * len(head),
           "| " + " | ".join(values) + " |", "", "| class | accuracy |", "|---|---:|"]
  lines += [f"| {c} | {100 * a:.2f} |" for c, a in metrics["per_class"].items()]
  return "\n".join(lines) + "\n"


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str,
                   title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  matrix = np.asarray(confusion, np.float64)
  normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
  image = ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
  ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
  ax.set_yticks(range(n), class_names, fontsize=8)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title, fontsize=9)
  for i in range(n):
    for j in range(n):
      if matrix[i, j]:
        ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                color="white" if normalised[i, j] > 0.5 else "black")
  fig.colorbar(image, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(metrics: Dict, class_names: Sequence[str], folder: str, name: str) -> Dict[str, str]:
  """Writes `<name>.json`, `<name>.md` and `<name>_confusion.png` into `folder`; returns paths."""
  os.makedirs(folder, exist_ok=True)
  paths = {ext: os.path.join(folder, f"{name}{suffix}") for ext, suffix in
           (("json", ".json"), ("md", ".md"), ("png", "_confusion.png"))}
  with open(paths["json"], "w") as f:
    json.dump(metrics, f, indent=1)
  with open(paths["md"], "w") as f:
    f.write(markdown_table(metrics, name))
  plot_confusion(metrics["confusion"], class_names, paths["png"], name)
  return paths
