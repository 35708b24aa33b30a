"""The reports' figures, drawn from the data behind their tables (jax_asc/eval/tables.py).

`write(report, data, folder)` saves `<folder>/<report>_<name>.png` for each figure of the report
and returns their paths:
  report000  teachers: table 1 (single teachers and ensembles) beside the report's figures, and
             the students distilled from each configuration; devices (once DSFT has run):
             table 2, per device before and after DSFT, beside the report's
  report001  accuracy of the teachers and of the students (SSFM, DFM)
  report002  student against teacher accuracy, one point per teacher (size and device
             generalisation method; ensembles as students only); student accuracy against
             teacher parameters, a line per architecture, the student without KD as a line
  report003  figure 2: closed- and open-set accuracy against student size (FT + KD, C-FT +
             CRD); table 1's teachers beside the report's
  report004  the system's CAPI-SDRi (dB) per tagger, 1c and 4c, beside the report's
Accuracies are in percent; ours are as measured (a smoke run's on synthetic data).
"""
from __future__ import annotations

import os
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _bars(ax, labels: List[str], series: Dict[str, List], title: str,
          ylabel: str = "accuracy (%)") -> None:
  """Grouped bars: one group per label, one bar per series (None = missing)."""
  width = 0.8 / max(1, len(series))
  x = np.arange(len(labels))
  for i, (name, values) in enumerate(series.items()):
    heights = [np.nan if v is None else v for v in values]
    ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name)
  ax.set_xticks(x, labels, rotation=30, ha="right")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize=8)


def _pct(value):
  return None if value is None else 100 * value


def report000(data: Dict) -> Dict[str, plt.Figure]:
  from jax_asc.eval import tables
  names = list(data["table1"])
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  _bars(axes[0], [n.upper() for n in names],
        {"ours": [_pct(data["table1"][n][0]) for n in names],
         "report": [tables.REPORT000_TABLE1.get(n, (None,))[0] for n in names]},
        "Table 1: teachers and ensembles")
  _bars(axes[1], [n.upper() for n in names],
        {"student": [_pct(data["students"][n][0]) for n in names]},
        "Students by teacher configuration")
  fig.tight_layout()
  if "table2" not in data:      # no DSFT report yet
    return {"teachers": fig}
  devices = [d for d in data["table2"]["before"] if d != "overall"]
  dev_fig, ax = plt.subplots(figsize=(8, 4))
  _bars(ax, devices,
        {"before DSFT": [_pct(data["table2"]["before"][d]) for d in devices],
         "after DSFT": [_pct(data["table2"]["after"].get(d)) for d in devices],
         "report after": [tables.REPORT000_TABLE2["after"].get(d) for d in devices]},
        "Table 2: per device, before and after DSFT")
  dev_fig.tight_layout()
  return {"teachers": fig, "devices": dev_fig}


def report001(data: Dict) -> Dict[str, plt.Figure]:
  teachers, students = data["teachers"], data["students"]
  fig, ax = plt.subplots(figsize=(8, 4))
  labels = list(teachers) + list(students)
  _bars(ax, labels, {"accuracy": [_pct(teachers[n]) for n in teachers] +
                     [_pct(students[n]["accuracy"]) for n in students]},
        "Teachers and students")
  fig.tight_layout()
  return {"accuracy": fig}


def report002(data: Dict) -> Dict[str, plt.Figure]:
  """Students against their teachers' accuracy, and against their teachers' size per
  architecture (log scale), with the student without KD as a line."""
  rows = {n: r for n, r in data.items() if isinstance(r, dict) and r.get("teacher") is not None
          and r.get("student") is not None}
  no_kd = _pct(data.get("no_kd", {}).get("student"))
  figures = {}
  fig, ax = plt.subplots(figsize=(6, 5))
  architectures = sorted({row.get("architecture", "?") for row in rows.values()})
  for architecture in architectures:   # one colour per architecture
    names = [n for n, r in rows.items() if r.get("architecture", "?") == architecture]
    ax.scatter([_pct(rows[n]["teacher"]) for n in names],
               [_pct(rows[n]["student"]) for n in names], label=architecture)
    for name in names:
      ax.annotate(name, (_pct(rows[name]["teacher"]), _pct(rows[name]["student"])), fontsize=7)
  if architectures:
    ax.legend(fontsize=8)
  ax.set_xlabel("teacher accuracy (%)")
  ax.set_ylabel("student accuracy (%)")
  ax.set_title("Students against their teachers")
  fig.tight_layout()
  figures["teachers"] = fig
  fig, ax = plt.subplots(figsize=(6, 5))
  by_architecture: Dict[str, list] = {}
  for name, row in rows.items():
    if row.get("params") and row.get("method") == "dirfms":
      by_architecture.setdefault(row.get("architecture", "?"), []).append(
          (row["params"], _pct(row["student"])))
  for architecture, points in sorted(by_architecture.items()):
    points.sort()
    ax.plot([p for p, _ in points], [a for _, a in points], marker="o", label=architecture)
  if no_kd is not None:
    ax.axhline(no_kd, color="gray", linestyle="--", label="student without KD")
  ax.set_xscale("log")
  ax.set_xlabel("teacher parameters")
  ax.set_ylabel("student accuracy (%)")
  ax.set_title("Students by teacher size and architecture (DIRFMS teachers)")
  if by_architecture or no_kd is not None:
    ax.legend(fontsize=8)
  fig.tight_layout()
  figures["sizes"] = fig
  return figures


def report003(data: Dict) -> Dict[str, plt.Figure]:
  """Figure 2: closed- and open-set accuracy against student parameters, FT + KD and C-FT + CRD
  (the report's plot gives no figures in its text, so ours alone); table 1's teachers beside the
  report's."""
  from jax_asc.eval import tables
  figures = {}
  sizes = data.get("figure2", {}).get("sizes", {})
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, key, title in ((axes[0], "closed", "Closed set (TAU22)"),
                         (axes[1], "open", f"Open set ({data.get('figure2', {}).get('open_set')}"
                                           ", 5-shot)")):
    for method, label in (("student_ft_kd", "FT + KD"), ("student_cft_crd", "C-FT + CRD")):
      points = sorted((e["params"], _pct((e.get(method) or {}).get(key)))
                      for e in sizes.values() if e.get("params") and e.get(method))
      points = [(p, a) for p, a in points if a is not None]
      if points:
        ax.plot([p for p, _ in points], [a for _, a in points], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("student parameters")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.tight_layout()
  figures["sizes"] = fig
  names = list(tables.REPORT003_TABLE1)
  fig, ax = plt.subplots(figsize=(7, 4))
  _bars(ax, [tables.REPORT003_TABLE1[n][0] for n in names],
        {"ours": [_pct((data.get("table1", {}).get(n) or [None])[0]) for n in names],
         "report": [tables.REPORT003_TABLE1[n][1] for n in names]},
        "Table 1: teachers, closed set")
  fig.tight_layout()
  figures["teachers"] = fig
  return figures


def report004(data: Dict) -> Dict[str, "plt.Figure"]:
  ours, reported = data.get("ours", {}), data.get("reported", {})
  tracks = [t for t in ("1c", "4c") if t in ours]
  if not tracks:
    return {}
  fig, axes = plt.subplots(1, len(tracks), figsize=(5 * len(tracks), 4), squeeze=False)
  for ax, track in zip(axes[0], tracks):
    systems = list(dict.fromkeys(list(reported.get(track, {})) + list(ours[track])))
    _bars(ax, systems, {
        "ours": [ours[track].get(s, {}).get("capi_sdri") for s in systems],
        "report": [reported.get(track, {}).get(s, {}).get("capi_sdri") for s in systems]},
        f"CAPI-SDRi, {track}", ylabel="CAPI-SDRi (dB)")
  fig.tight_layout()
  return {"capi_sdri": fig}


FIGURES = {"report000": report000, "report001": report001, "report002": report002,
           "report003": report003, "report004": report004}


def write(report: str, data: Dict, folder: str) -> List[str]:
  os.makedirs(folder, exist_ok=True)
  paths = []
  for name, fig in FIGURES[report](data).items():
    path = os.path.join(folder, f"{report}_{name}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths
