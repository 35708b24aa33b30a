"""The reports' tables, assembled from the runs a launch script made.

    python -m jax_asc.eval.tables report000 WORKDIR [--smoke]

reads the evaluation reports under WORKDIR (layout: `teachers/<role>/`, `students/<name>/`, as
`launch/report00*_*.sh` create it) and writes `WORKDIR/tables/<report>.{md,json}`: our figures
beside the report's, the latter labelled as the report's (and ours as smoke when `--smoke`),
and the report's plots `WORKDIR/tables/<report>_<name>.png` (jax_asc/eval/plots.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Dict, List, Optional

# Figures stated in the reports (development-set accuracy, %).
# Table 1, "Teacher accuracy based on different configurations": overall, real, seen, unseen.
REPORT000_TABLE1 = {
    "t_ce1": (59.78, 65.22, 56.77, 57.36), "t_ce2": (59.22, 64.97, 56.10, 56.60),
    "t_dafa": (59.00, 64.70, 55.60, 56.71),
    "t_ce1+t_ce2": (60.73, 66.47, 57.41, 58.31), "t_ce1+t_dafa": (60.73, 66.12, 57.73, 58.35)}
REPORT000_TABLE2 = {   # per device after distillation / after DSFT
    "before": {"a": 64.33, "b": 52.43, "c": 57.33, "s1": 51.39, "s2": 51.70, "s3": 54.58,
               "s4": 54.67, "s5": 55.12, "s6": 50.00, "overall": 54.61},
    "after": {"a": 69.82, "b": 60.67, "c": 64.80, "s1": 53.55, "s2": 54.94, "s3": 57.82,
              "s4": 54.67, "s5": 55.12, "s6": 50.00, "overall": 57.93}}
REPORT001_TABLE2 = {"student_ssfm": ("SSFM", "Stage 1–3", 58.80),
                    "student_dfm": ("DFM", "Stage 3", 59.30)}
REPORT002_BEST = 65.81


def _load(path: str) -> Optional[Dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _eval(run: str, split: str) -> Optional[Dict]:
  return _load(os.path.join(run, "reports", f"{split}.json"))


def _pct(value) -> str:
  return "–" if value is None else f"{100 * value:.2f}"


def _int(value) -> str:
  return "–" if value is None else f"{int(value):,}"


def _group(result, name):
  return None if result is None else result.get("device_groups", {}).get(name)


def _runs(folder: str) -> List[str]:
  return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))) \
      if os.path.isdir(folder) else []


def _selected_on_test(run: str) -> bool:
  """Whether the run at `run` chose checkpoints (best-k, soups, "best" teachers) on the test split:
  `data.selection_split == "test"` in its config.json (older runs without that key: when their
  validation split was the test split)."""
  data = (_load(os.path.join(run, "config.json")) or {}).get("data", {})
  if "selection_split" in data:
    return data["selection_split"] == "test"
  return "validation_split" in data and data["validation_split"] == data.get("test_split")


def _test_selection_note(runs: List[str]) -> List[str]:
  """The note under a table whose `runs` (workdirs) include some that selected on the test."""
  names = [os.path.basename(r) for r in runs if _selected_on_test(r)]
  if not names:
    return []
  return ["", f"**Note: selected on the test split** ({', '.join(names)}): checkpoints, soups or "
              "'best' teachers were chosen on the split evaluated here (data.selection_split="
              "\"test\"), so these figures are optimistic."]


def _all_runs(workdir: str) -> List[str]:
  return [os.path.join(workdir, g, r) for g in ("teachers", "students")
          for r in _runs(os.path.join(workdir, g))]


def _split_of(workdir: str) -> str:
  for group in ("students", "teachers", "taggers"):
    for run in _runs(os.path.join(workdir, group)):
      config = _load(os.path.join(workdir, group, run, "config.json"))
      if config:
        return config["evaluate"]["split"]
  raise FileNotFoundError(f"no run with a config.json under {workdir}/students, /teachers or "
                          f"/taggers")


def _configuration_result(workdir: str, name: str, split: str) -> tuple:
  """(result, run folder) of teacher configuration `name` of report 000 on `split`: a single
  teacher's own evaluation (`teachers/<name>`), or an ensemble's as the `ensemble` stage of the
  student distilled from it scored it (`students/<a+b>/reports/ensemble_<split>.json`)."""
  if "+" not in name:
    run = os.path.join(workdir, "teachers", name)
    return _eval(run, split), run
  run = os.path.join(workdir, "students", name)
  return _load(os.path.join(run, "reports", f"ensemble_{split}.json")), run


def _accuracy_row(result) -> list:
  """[overall, real, seen, unseen] accuracies (fractions, None where missing)."""
  return [result and result["accuracy"]] + [_group(result, g) for g in ("real", "seen", "unseen")]


def report000(workdir: str, split: str, ours: str) -> tuple:
  lines = ["## Report 000, table 1: teacher accuracy (%) by configuration", "",
           "Single PaSST teachers and their logit-averaged ensembles (the teachers a student is "
           "distilled from), as the report's table title says; its text reads as if the figures "
           "were the students' distilled from each configuration, which the next table gives.",
           "",
           "| teachers | overall | real | seen | unseen | report: overall | real | seen | "
           "unseen |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  data = {"table1": {}, "students": {}}
  runs = []
  for name, reference in REPORT000_TABLE1.items():
    result, run = _configuration_result(workdir, name, split)
    runs.append(run)
    row = _accuracy_row(result)
    data["table1"][name] = row
    lines.append(f"| {name.upper()} | " + " | ".join(_pct(v) for v in row) + " | " +
                 " | ".join(f"{v:.2f}" for v in reference) + " |")
  lines += _test_selection_note(runs)
  lines += ["", "## Report 000: student accuracy (%) by teacher configuration", "",
            f"The CP-Mobile student distilled from each configuration of table 1 ({ours}; the "
            "report gives no such table), in float32, and overall with float16 weights and "
            "inputs and with int8 post-training-quantised parameters.", "",
            "| teachers | overall | real | seen | unseen | float16 | int8 |",
            "|---|---:|---:|---:|---:|---:|---:|"]
  data["deployed"] = {}
  for name in REPORT000_TABLE1:
    result = _eval(os.path.join(workdir, "students", name), split)
    row = _accuracy_row(result)
    data["students"][name] = row
    data["deployed"][name] = {k: result and result.get(k, {}).get("accuracy")
                              for k in ("fp16", "int8")}
    lines.append(f"| {name.upper()} | " + " | ".join(_pct(v) for v in row) + " | " +
                 " | ".join(_pct(data["deployed"][name][k]) for k in ("fp16", "int8")) + " |")
  lines += _test_selection_note([os.path.join(workdir, "students", n) for n in REPORT000_TABLE1])
  complexity = _load(os.path.join(workdir, "students", "t_ce1+t_dafa", "reports",
                                  "complexity.json"))
  if complexity:
    data["complexity"] = {k: complexity[k] for k in ("params", "macs", "param_bytes",
                                                     "limit_dtype", "within_dcase_limits")}
    verdict = "within" if complexity["within_dcase_limits"] else "**over**"
    lines += ["", f"Student complexity: {complexity['params']:,} parameters, "
                  f"{complexity['macs']:,} MACs; parameter memory "
              + ", ".join(f"{k} {v:,} B" for k, v in complexity["param_bytes"].items())
              + f"; deployed in {complexity['limit_dtype']}: {verdict} the DCASE limits "
                "(128,000 B, 30 M MACs)."]
  dsft = _load(os.path.join(workdir, "students", "t_ce1+t_dafa", "reports", f"dsft_{split}.json"))
  lines += ["", "## Report 000, table 2: accuracy (%) by device, before and after DSFT", ""]
  if dsft:
    devices = list(REPORT000_TABLE2["before"])[:-1]
    lines += ["| stage | " + " | ".join(d.upper() for d in devices) + " | overall |",
              "|---|" + "---:|" * (len(devices) + 1)]
    for key, label in (("before", "after distillation"), ("after", "after DSFT")):
      per = dsft[key]["per_device"]
      lines.append(f"| {label} ({ours}) | " + " | ".join(_pct(per.get(d)) for d in devices) +
                   f" | {_pct(dsft[key]['accuracy'])} |")
    for key, label in (("before", "after distillation"), ("after", "after DSFT")):
      ref = REPORT000_TABLE2[key]
      lines.append(f"| {label} (report) | " + " | ".join(f"{ref[d]:.2f}" for d in devices) +
                   f" | {ref['overall']:.2f} |")
    lines += _test_selection_note([os.path.join(workdir, "students", "t_ce1+t_dafa")])
    data["table2"] = {k: dsft[k]["per_device"] for k in ("before", "after")}
  else:
    lines.append("(no DSFT report yet: run the finetune_device stage)")
  return "\n".join(lines) + "\n", data


def report001(workdir: str, split: str, ours: str) -> tuple:
  lines = ["## Report 001, table 2: submissions", "",
           "| system | feature KD | stages | feature teacher | output KD teachers | params | "
           "MACs | accuracy | fp16 accuracy | int8 accuracy | report accuracy |",
           "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
  data = {"students": {}, "teachers": {}}
  teachers = _runs(os.path.join(workdir, "teachers"))
  for name, (method, stages, reference) in REPORT001_TABLE2.items():
    run = os.path.join(workdir, "students", name)
    result = _eval(run, split)
    config = _load(os.path.join(run, "config.json")) or {}
    named = config.get("teachers", {})
    feature_teacher = os.path.basename(named.get("online", {}).get("run", "")) or "–"
    members = [os.path.basename(m) for m in named.get("ensemble", {}).get("runs", "").split(",")
               if m]
    fp16, int8 = (result and result.get(k, {}).get("accuracy") for k in ("fp16", "int8"))
    row = dict(accuracy=result and result["accuracy"], fp16=fp16, int8=int8,
               params=result and result.get("params"), macs=result and result.get("macs"))
    data["students"][name] = row
    lines.append(f"| {name} | {method} | {stages} | {feature_teacher} | "
                 f"{' + '.join(members) or '–'} | {_int(row['params'])} | {_int(row['macs'])} | "
                 f"{_pct(row['accuracy'])} | {_pct(fp16)} | {_pct(int8)} | {reference:.2f} |")
  lines += _test_selection_note([os.path.join(workdir, "students", n) for n in REPORT001_TABLE2])
  lines += ["", f"Teachers ({ours}; model soup of the best checkpoints):", "",
            "| teacher | soup accuracy |", "|---|---:|"]
  for name in teachers:
    result = _eval(os.path.join(workdir, "teachers", name), split)
    data["teachers"][name] = result and result["accuracy"]
    lines.append(f"| {name} | {_pct(result and result['accuracy'])} |")
  lines += _test_selection_note([os.path.join(workdir, "teachers", n) for n in teachers])
  lines.append("\nThe report states 61.16 K parameters and 17.05 M MACs for its student and 58.80 / "
               "59.30 % accuracy (S1 / S2).")
  return "\n".join(lines) + "\n", data


# Report 002's teacher architectures by the model a run trains (config.json's model.name).
REPORT002_ARCHITECTURES = {"cp_resnet": "CP-ResNet", "cp_mobile": "CP-Mobile", "crnn": "CRNN",
                           "vit": "ViT", "passt": "PaSST"}
REPORT002_NO_KD = "no_kd"   # the student trained without KD (students/no_kd)


def report002_name(name: str) -> tuple:
  """"crnn128k_dirfms" → ("crnn", "128k", "dirfms"); "passt_fms" → ("passt", "", "fms") (the
  teacher roles of configs/report002_teachers.py)."""
  family, _, method = name.partition("_")
  match = re.match(r"^([a-z]+?)(\d+[km])$", family)
  return (match.group(1), match.group(2), method) if match else (family, "", method)


def _architecture(run: str) -> str:
  """The architecture a run trains, from its config.json (before that: its name's prefix)."""
  config = _load(os.path.join(run, "config.json")) or {}
  name = config.get("model", {}).get("name")
  if name is None:
    return report002_name(os.path.basename(run))[0]
  return REPORT002_ARCHITECTURES.get(name, name)


def report002(workdir: str, split: str, ours: str) -> tuple:
  """Teachers grouped by architecture (size, device generalisation, accuracy) with the student
  distilled from each and its gain over the student without KD; the ensembles; the students of
  teachers of one size and method but different architectures side by side (the report's
  finding: a different architecture teaches better)."""
  students = os.path.join(workdir, "students")
  no_kd = _eval(os.path.join(students, REPORT002_NO_KD), split)
  no_kd_acc = no_kd and no_kd["accuracy"]
  counted = no_kd or next((r for r in (_eval(os.path.join(students, n), split)
                                       for n in _runs(students)) if r), None)
  gain = lambda acc: "–" if acc is None or no_kd_acc is None else f"{100 * (acc - no_kd_acc):+.2f}"
  lines = ["## Report 002: teachers and their students", "",
           f"Students: CP-Mobile, {_int(counted and counted.get('params'))} parameters, "
           f"{_int(counted and counted.get('macs'))} MACs per input clip (a 1-s segment in the "
           f"full run); without KD {_pct(no_kd_acc)} % ({ours}). KD gain = student − student "
           "without KD.", "",
           "| architecture | teacher | parameters | device generalisation | teacher accuracy | "
           "student accuracy | KD gain |", "|---|---|---:|---|---:|---:|---:|"]
  data = {REPORT002_NO_KD: {"student": no_kd_acc}}
  teachers = []
  for name in _runs(os.path.join(workdir, "teachers")):
    run = os.path.join(workdir, "teachers", name)
    teacher = _eval(run, split)
    student = _eval(os.path.join(students, name), split)
    _, size, method = report002_name(name)
    row = dict(architecture=_architecture(run), size=size,
               params=teacher and teacher.get("params"), method=method,
               teacher=teacher and teacher["accuracy"], student=student and student["accuracy"])
    data[name] = row
    teachers.append((row["architecture"], row["params"] or 0, name))
  for architecture, _, name in sorted(teachers):
    row = data[name]
    lines.append(f"| {architecture} | {name} | {_int(row['params'])} | {row['method'].upper()} | "
                 f"{_pct(row['teacher'])} | {_pct(row['student'])} | {gain(row['student'])} |")
  for name in _runs(students):
    if "+" in name:
      student = _eval(os.path.join(students, name), split)
      data[name] = {"student": student and student["accuracy"]}
      lines.append(f"| ensemble | {name} | – | – | – | {_pct(student and student['accuracy'])} | "
                   f"{gain(student and student['accuracy'])} |")
  # Matched comparison: the same size tag and method, different architectures.
  matched: Dict[str, Dict[str, Optional[float]]] = {}
  for _, _, name in teachers:
    row = data[name]
    if row["size"]:
      matched.setdefault(f"{row['size']} {row['method'].upper()}", {})[row["architecture"]] = (
          row["student"])
  matched = {key: by_arch for key, by_arch in matched.items() if len(by_arch) > 1}
  if matched:
    columns = sorted({arch for by_arch in matched.values() for arch in by_arch})
    lines += ["", "Students by teacher architecture at one teacher size and method (the "
              "report: a different architecture than the student's CP-Mobile teaches better):",
              "", "| teacher size, method | " + " | ".join(columns) + " |",
              "|---|" + "---:|" * len(columns)]
    for key, by_arch in sorted(matched.items()):
      lines.append(f"| {key} | " + " | ".join(_pct(by_arch.get(a)) for a in columns) + " |")
    data["matched"] = matched
  lines += _test_selection_note(_all_runs(workdir))
  lines.append(f"\nReport: best student {REPORT002_BEST:.2f} % (CP-ResNet + PaSST ensemble, "
               "DIRFMS, TAU20 validation); the report tabulates no other figure.")
  return "\n".join(lines) + "\n", data


# Report 003 (ContrastASC): table 1 (teachers: TAU22, TUT17 5-shot, 20-shot, mAP), table 2
# (126K students: TAU22, TUT17 5/20-shot, ICME24 5/20-shot), table 3 (5-shot seen / unseen).
REPORT003_TABLE1 = {"frozen": ("BEATs (Frozen)", 55.8, 55.9, 67.6, 0.48),
                    "ft": ("FT (CE-only)", 62.5, 60.1, 70.4, 0.54),
                    "cft": ("Contrastive FT", 62.5, 62.3, 72.4, 0.58),
                    "cft_linear": ("Contrastive FT (linear head)", 62.6, 61.7, 72.2, 0.57)}
REPORT003_TABLE2 = {"student_nokd": ("–", "No KD", 57.4, 50.7, 61.2, 58.2, 72.2),
                    "student_ft_kd": ("FT", "KD", 59.3, 53.0, 62.9, 62.6, 75.4),
                    "student_ft_crd": ("FT", "CRD", 60.0, 55.1, 65.8, 61.7, 76.0),
                    "student_cft_kd": ("C-FT", "KD", 59.9, 56.1, 64.5, 63.5, 76.1),
                    "student_cft_crd": ("C-FT", "CRD", 60.6, 56.3, 66.5, 64.5, 77.7),
                    "student_cft_crd_nonorm": ("C-FT", "CRD − LayerNorm", 60.4, 56.4, 65.9,
                                               63.8, 76.5),
                    "student_cft_crd_batchnorm": ("C-FT", "CRD + BatchNorm", 60.0, 54.9, 65.8,
                                                  62.2, 76.3)}
REPORT003_TABLE3 = {"student_nokd": ("No KD", 44.1, 53.2, 59.6, 57.7),
                    "student_ft_kd": ("FT + KD", 48.7, 54.8, 64.3, 61.2),
                    "student_cft_crd": ("C-FT + CRD", 47.9, 59.6, 65.8, 64.3)}
# Open-set datasets of the tables (the smoke chain's synthetic open set stands in for both).
REPORT003_OPEN_SETS = ("tut17", "icme24")


def _fewshot(run: str) -> Dict:
  """{dataset: its few-shot result} of a run's stage fewshot ({} before it ran)."""
  return (_load(os.path.join(run, "reports", "fewshot.json")) or {}).get("datasets", {})


def _shot(fewshot: Dict, dataset: str, k: int, group: str = "accuracy"):
  value = fewshot.get(dataset, {}).get("shots", {}).get(str(k), {}).get(group) or {}
  return value.get("mean")


def _open_sets(runs: List[str]) -> List[tuple]:
  """[(column label, dataset)]: TUT17 and ICME24, or the datasets the runs were evaluated on."""
  present = {name for run in runs for name in _fewshot(run)}
  wanted = [d for d in REPORT003_OPEN_SETS if d in present]
  if wanted:
    return [(d.upper(), d) for d in wanted]
  return [(d, d) for d in sorted(present)]


def report003_size(name: str) -> str:
  """The student size of a run folder `student_ft_kd@24k` ("" = the 126K model)."""
  return name.split("@", 1)[1] if "@" in name else ""


def report003(workdir: str, split: str, ours: str) -> tuple:
  """Tables 1-3 (teachers; students of the 126K size; 5-shot seen / unseen) and the data of
  figure 2 (closed- and open-set accuracy of FT + KD and C-FT + CRD students per size)."""
  teachers = {n: os.path.join(workdir, "teachers", n) for n in REPORT003_TABLE1}
  students_dir = os.path.join(workdir, "students")
  students = {n: os.path.join(students_dir, n) for n in REPORT003_TABLE2}
  data = {"table1": {}, "table2": {}, "table3": {}, "figure2": {}}
  open1 = _open_sets(list(teachers.values()))[:1]
  label1 = open1[0][0] if open1 else "TUT17"
  lines = ["## Report 003, table 1: teachers", "",
           f"Closed set: {split} accuracy (%). Open set: {label1} K-shot accuracy (%, logistic "
           "regression on the pooled embedding, mean over episodes) and retrieval mAP. Report's "
           "figures (TAU22, TUT17) in brackets.", "",
           f"| teacher | TAU22 | {label1} 5-shot | 20-shot | mAP |", "|---|---:|---:|---:|---:|"]
  for name, (label, *reference) in REPORT003_TABLE1.items():
    result, fewshot = _eval(teachers[name], split), _fewshot(teachers[name])
    dataset = open1[0][1] if open1 else "tut17"
    row = [result and result["accuracy"], _shot(fewshot, dataset, 5),
           _shot(fewshot, dataset, 20), fewshot.get(dataset, {}).get("map")]
    data["table1"][name] = row
    refs = reference if dataset == "tut17" else reference[:1] + [None] * 3
    cells = [_pct(v) + ("" if r is None else f" ({r})") for v, r in zip(row[:3], refs[:3])]
    cells.append(("–" if row[3] is None else f"{row[3]:.2f}") +
                 ("" if refs[3] is None else f" ({refs[3]:.2f})"))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  lines += _test_selection_note(list(teachers.values()))

  open2 = _open_sets(list(students.values()))
  counted = next((r for r in (_eval(p, split) for p in students.values()) if r), None)
  lines += ["", "## Report 003, table 2: CP-Mobile students", "",
            f"CP-Mobile with LayerNorm, {_int(counted and counted.get('params'))} parameters "
            f"({ours}). Closed set: {split} accuracy (%); open sets: 5- and 20-shot accuracy "
            "(%) on the pre-LayerNorm embedding. Report's figures in brackets.", "",
            "| teacher | KD method | TAU22 | " + " | ".join(
                f"{label} 5-shot | {label} 20-shot" for label, _ in open2) + " |",
            "|---|---|---:|" + "---:|---:|" * len(open2)]
  for name, (teacher, method, *reference) in REPORT003_TABLE2.items():
    result, fewshot = _eval(students[name], split), _fewshot(students[name])
    row = {"accuracy": result and result["accuracy"]}
    cells = [f"{_pct(row['accuracy'])} ({reference[0]})"]
    for i, (label, dataset) in enumerate(open2):
      for j, k in enumerate((5, 20)):
        row[f"{dataset}/{k}"] = _shot(fewshot, dataset, k)
        ref = (reference[1 + 2 * REPORT003_OPEN_SETS.index(dataset) + j]
               if dataset in REPORT003_OPEN_SETS else None)
        cells.append(_pct(row[f"{dataset}/{k}"]) + (f" ({ref})" if ref is not None else ""))
    data["table2"][name] = row
    lines.append(f"| {teacher} | {method} | " + " | ".join(cells) + " |")
  lines += _test_selection_note(list(students.values()))

  lines += ["", "## Report 003, table 3: 5-shot accuracy (%) on seen and unseen classes", "",
            "Seen: the open set's classes that TAU22 also has (configs/common.fewshot_config). "
            "Report's figures in brackets.", "",
            "| method | " + " | ".join(f"{label} seen | {label} unseen" for label, _ in open2)
            + " |", "|---|" + "---:|---:|" * len(open2)]
  for name, (label, *reference) in REPORT003_TABLE3.items():
    fewshot = _fewshot(students[name])
    row, cells = {}, []
    for i, (_, dataset) in enumerate(open2):
      for j, group in enumerate(("seen", "unseen")):
        row[f"{dataset}/{group}"] = _shot(fewshot, dataset, 5, group)
        ref = (reference[2 * REPORT003_OPEN_SETS.index(dataset) + j]
               if dataset in REPORT003_OPEN_SETS else None)
        cells.append(_pct(row[f"{dataset}/{group}"]) + (f" ({ref})" if ref is not None else ""))
    data["table3"][name] = row
    lines.append(f"| {label} | " + " | ".join(cells) + " |")

  # Figure 2: every size of FT + KD and C-FT + CRD.
  open_fig = open2[-1][1] if open2 else "icme24"
  lines += ["", "## Report 003, figure 2: accuracy (%) by student size", "",
            f"Closed set ({split}) and open set ({open_fig} 5-shot), FT + KD against C-FT + "
            "CRD. The report draws these as a plot without figures in the text: C-FT + CRD "
            "gains 1.8-3.2 points closed-set and up to 6.3 on ICME24.", "",
            "| size | parameters | FT + KD closed | C-FT + CRD closed | FT + KD open | "
            "C-FT + CRD open |", "|---|---:|---:|---:|---:|---:|"]
  sizes: Dict[str, Dict] = {}
  for name in _runs(students_dir):
    base = name.split("@", 1)[0]
    if base not in ("student_ft_kd", "student_cft_crd"):
      continue
    run = os.path.join(students_dir, name)
    result = _eval(run, split)
    entry = sizes.setdefault(report003_size(name) or "126k", {"params": None})
    entry["params"] = entry["params"] or (result and result.get("params"))
    entry[base] = {"closed": result and result["accuracy"],
                   "open": _shot(_fewshot(run), open_fig, 5)}
  for size, entry in sorted(sizes.items(), key=lambda kv: kv[1]["params"] or 0):
    get = lambda method, key: (entry.get(method) or {}).get(key)
    lines.append(f"| {size} | {_int(entry['params'])} | " + " | ".join(
        _pct(get(m, key)) for key in ("closed", "open")
        for m in ("student_ft_kd", "student_cft_crd")) + " |")
  data["figure2"] = {"open_set": open_fig, "sizes": sizes}
  lines += _test_selection_note(_all_runs(workdir))
  return "\n".join(lines) + "\n", data


def report004(workdir: str, split: str, ours: str) -> tuple:
  """Tables 1 and 2 as the system evaluation wrote them (`system/reports/system_eval.*`)."""
  folder = os.path.join(workdir, "system", "reports")
  data = _load(os.path.join(folder, "system_eval.json"))
  if data is None:
    return "The system evaluation has not run yet (system/system_eval.done.json).\n", {}
  with open(os.path.join(folder, "system_eval.md")) as f:
    markdown = f.read().split("\n", 2)[2]   # without its title
  return markdown, data


REPORTS = {"report000": report000, "report001": report001, "report002": report002,
           "report003": report003, "report004": report004}


def write(report: str, workdir: str, smoke: bool = False) -> str:
  split = _split_of(workdir)
  ours = "ours, smoke run: synthetic data, tiny models" if smoke else "ours"
  markdown, data = REPORTS[report](workdir, split, ours)
  header = f"# {report} ({ours}; evaluated on split {split!r})\n\n"
  folder = os.path.join(workdir, "tables")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f"{report}.md"), "w") as f:
    f.write(header + markdown)
  with open(os.path.join(folder, f"{report}.json"), "w") as f:
    json.dump({"split": split, "smoke": smoke, **data,
               "selected_on_test": sorted(os.path.relpath(r, workdir) for r in _all_runs(workdir)
                                          if _selected_on_test(r))}, f, indent=1)
  from jax_asc.eval import plots
  plots.write(report, data, folder)
  return header + markdown


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("report", choices=sorted(REPORTS))
  parser.add_argument("workdir")
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args(argv)
  print(write(args.report, args.workdir, args.smoke))


if __name__ == "__main__":
  main()
