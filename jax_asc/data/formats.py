"""Readers of the official dataset layouts: metadata → a validated `Manifest` (no audio yet).

Each reader parses the files exactly as the datasets ship them (see
`../shared/reference/datasets.md`) and checks them: duplicate rows, labels outside the class list,
split files naming files the metadata does not know, unreadable metadata. Every error names the
file and row. Class and device vocabularies are fixed per dataset (below), so indices never depend
on which files a split happens to contain.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import os
from typing import Dict, List, Optional, Sequence

TAU_CLASSES = ("airport", "bus", "metro", "metro_station", "park", "public_square",
               "shopping_mall", "street_pedestrian", "street_traffic", "tram")
TAU_DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6", "d", "s7", "s8", "s9", "s10",
               "s11", "unknown")
TUT17_CLASSES = ("beach", "bus", "cafe/restaurant", "car", "city_center", "forest_path",
                 "grocery_store", "home", "library", "metro_station", "office", "park",
                 "residential_area", "train", "tram")
ICME24_CLASSES = ("Bus", "Airport", "Metro", "Restaurant", "Shopping mall", "Public square",
                  "Urban park", "Traffic street", "Construction site", "Bar")
ESC50_CLASSES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow", "rain",
    "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind",
    "pouring_water", "toilet_flush", "thunderstorm", "crying_baby", "sneezing", "clapping",
    "breathing", "coughing", "footsteps", "laughing", "brushing_teeth", "snoring",
    "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks",
    "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
    "glass_breaking", "helicopter", "chainsaw", "siren", "car_horn", "engine", "train",
    "church_bells", "airplane", "fireworks", "hand_saw")
NO_DEVICE = ("unknown",)


# The references' names of TAU's fold-1 lists.
TAU_SPLIT_ALIASES = {"train": "fold1_train", "evaluate": "fold1_evaluate",
                     "validation": "fold1_evaluate"}


def esc50_folds(split: str) -> tuple:
  """The folds (sorted ints) of an ESC-50 split name: `fold3` → (3,), `folds1234` → (1, 2, 3,
  4)."""
  digits = split[5:] if split.startswith("folds") else split[4:] if split.startswith("fold") else ""
  if not digits or not all(d in "12345" for d in digits):
    raise MetadataError(f"esc50 splits are fold1 … fold5 or folds<digits>, got {split!r}")
  return tuple(sorted({int(d) for d in digits}))


class MetadataError(ValueError):
  """Bad metadata: the message names the file (and row) and what was expected."""


@dataclasses.dataclass
class Example:
  filename: str            # as the metadata names it (the key of everything downstream)
  path: str                # absolute path of the audio file
  label: int               # class index, -1 when unlabelled
  device: str              # device code ("unknown" when the format has none)
  identifier: str = ""     # recording location / source id where the format has one


@dataclasses.dataclass
class Manifest:
  """The examples of one split with the dataset's fixed vocabularies and audio promises."""
  dataset: str
  split: str
  root: str
  classes: Sequence[str]
  devices: Sequence[str]
  sample_rate: Optional[int]       # native rate every file must have (None: any, resampled)
  channels: int                    # channel count every file must have
  clip_seconds: float              # nominal clip length
  variable_length: bool            # True: shorter clips are zero-padded to clip_seconds
  examples: List[Example]


def _read_table(path: str, *, delimiter: str, header: bool, columns: Sequence[str]) -> List[Dict]:
  """Rows of a CSV/TSV as dicts with `_row` (1-based line number); checks the columns."""
  if not os.path.exists(path):
    raise MetadataError(f"{path}: metadata file not found")
  with open(path, newline="", encoding="utf-8") as f:
    lines = [line for line in csv.reader(f, delimiter=delimiter)]
  rows = []
  if header:
    if not lines:
      raise MetadataError(f"{path}: empty file, expected a header with {list(columns)}")
    names = [n.strip() for n in lines[0]]
    missing = [c for c in columns if c not in names]
    if missing:
      raise MetadataError(f"{path}: header {names} lacks column(s) {missing}")
    body, first = lines[1:], 2
  else:
    names, body, first = list(columns), lines, 1
  for number, values in enumerate(body, start=first):
    if not values or all(not v.strip() for v in values):
      continue
    if len(values) < len(names):
      raise MetadataError(f"{path}, row {number}: {len(values)} field(s), expected "
                          f"{len(names)} ({delimiter!r}-separated {list(names)})")
    row = {name: (values[i].strip() if i < len(values) else "") for i, name in enumerate(names)}
    row["_row"] = number
    rows.append(row)
  return rows


def _unique(rows: List[Dict], key: str, path: str) -> Dict[str, Dict]:
  out = {}
  for row in rows:
    if row[key] in out:
      raise MetadataError(f"{path}, row {row['_row']}: duplicate {key} {row[key]!r} "
                          f"(first at row {out[row[key]]['_row']})")
    out[row[key]] = row
  return out


def _label_index(label: str, classes: Sequence[str], path: str, row: int) -> int:
  if label == "":
    return -1
  if label not in classes:
    raise MetadataError(f"{path}, row {row}: label {label!r} is not a class of this dataset "
                        f"({list(classes)})")
  return classes.index(label)


def _select(known: Dict[str, Dict], names: Sequence[str], list_path: str) -> List[str]:
  unknown = [n for n in names if n not in known]
  if unknown:
    raise MetadataError(f"{list_path}: {len(unknown)} file(s) not in the dataset's metadata, "
                        f"e.g. {unknown[:3]}")
  return list(names)


def tau_device(filename: str) -> str:
  """Device code from a TAU file name (`…-a.wav` → `a`)."""
  return os.path.splitext(os.path.basename(filename))[0].rsplit("-", 1)[-1]


def tau_mobile(root: str, split: str, *, version: str = "2022",
               split_dir: Optional[str] = None) -> Manifest:
  """TAU Urban Acoustic Scenes 2020/2022 Mobile development.

  split: `fold1_train`, `fold1_evaluate` (= `train` / `test` of the references) or `fold1_test`
  (unlabelled list) from `evaluation_setup/`; or, with the DCASE 2024/2025 split files in
  `split_dir` (default `root`), `split5` … `split100` and `test`. Labels, devices and
  identifiers always come from `meta.csv`; each row's `source_label` must equal the device
  suffix of its file name (`…-<device>.wav`), else a `MetadataError` names the row.
  """
  meta_path = os.path.join(root, "meta.csv")
  meta = _unique(_read_table(meta_path, delimiter="\t", header=True,
                             columns=("filename", "scene_label", "identifier", "source_label")),
                 "filename", meta_path)
  for row in meta.values():
    _label_index(row["scene_label"], TAU_CLASSES, meta_path, row["_row"])
    if row["source_label"] not in TAU_DEVICES:
      raise MetadataError(f"{meta_path}, row {row['_row']}: device {row['source_label']!r} "
                          f"not in {list(TAU_DEVICES)}")
    # The file name ends in its device (`…-s4.wav`): a disagreement means a broken meta.csv.
    if tau_device(row["filename"]) != row["source_label"]:
      raise MetadataError(f"{meta_path}, row {row['_row']}: file name {row['filename']!r} ends "
                          f"in device {tau_device(row['filename'])!r} but source_label is "
                          f"{row['source_label']!r}; expected them to agree")
  split = TAU_SPLIT_ALIASES.get(split, split)
  if split.startswith("fold1_"):
    list_path = os.path.join(root, "evaluation_setup", f"{split}.csv")
  elif split in ("split5", "split10", "split25", "split50", "split100", "test"):
    list_path = os.path.join(split_dir or root, f"{split}.csv")
  else:
    raise MetadataError(f"TAU split must be fold1_train, fold1_evaluate, fold1_test, split5 … "
                        f"split100 or test, got {split!r}")
  listed = _read_table(list_path, delimiter="\t", header=True, columns=("filename",))
  names = _select(meta, list(_unique(listed, "filename", list_path)), list_path)
  examples = [Example(n, os.path.join(root, n), TAU_CLASSES.index(meta[n]["scene_label"]),
                      meta[n]["source_label"], meta[n]["identifier"]) for n in names]
  return Manifest(f"tau{version}_mobile", split, root, TAU_CLASSES, TAU_DEVICES, 44100, 1,
                  1.0 if version == "2022" else 10.0, False, examples)


def dcase25_evaluation(root: str) -> Manifest:
  """TAU Urban Acoustic Scenes 2025 Mobile evaluation (prediction only; `device_id` column,
  `unknown` for devices not in the training set)."""
  list_path = os.path.join(root, "evaluation_setup", "fold1_test.csv")
  rows = _unique(_read_table(list_path, delimiter="\t", header=True,
                             columns=("filename", "device_id")), "filename", list_path)
  examples = []
  for name, row in rows.items():
    if row["device_id"] not in TAU_DEVICES:
      raise MetadataError(f"{list_path}, row {row['_row']}: device_id {row['device_id']!r} not in "
                          f"{list(TAU_DEVICES)}")
    examples.append(Example(name, os.path.join(root, name), -1, row["device_id"]))
  return Manifest("tau2025_mobile_evaluation", "test", root, TAU_CLASSES, TAU_DEVICES, 44100, 1,
                  1.0, False, examples)


def tut17(root: str, split: str, *, fold: int = 1) -> Manifest:
  """TUT Acoustic Scenes 2017 development: headerless TAB `meta.txt`, 4 folds, binaural."""
  if fold not in (1, 2, 3, 4):
    raise MetadataError(f"TUT 2017 fold must be 1–4, got {fold}")
  if split not in ("train", "evaluate", "test"):
    raise MetadataError(f"TUT 2017 split must be train, evaluate or test, got {split!r}")
  meta_path = os.path.join(root, "meta.txt")
  meta = _unique(_read_table(meta_path, delimiter="\t", header=False,
                             columns=("filename", "scene_label", "identifier")),
                 "filename", meta_path)
  for row in meta.values():
    _label_index(row["scene_label"], TUT17_CLASSES, meta_path, row["_row"])
  list_path = os.path.join(root, "evaluation_setup", f"fold{fold}_{split}.txt")
  columns = ("filename",) if split == "test" else ("filename", "scene_label")
  listed = _unique(_read_table(list_path, delimiter="\t", header=False, columns=columns),
                   "filename", list_path)
  names = _select(meta, list(listed), list_path)
  examples = [Example(n, os.path.join(root, n), TUT17_CLASSES.index(meta[n]["scene_label"]),
                      "unknown", meta[n]["identifier"]) for n in names]
  return Manifest("tut17", f"fold{fold}_{split}", root, TUT17_CLASSES, NO_DEVICE, 44100, 2,
                  10.0, False, examples)


def icme24(root: str, *, label_file: str = "data/ICME2024_ASC_dev_label.csv",
           audio_dir: str = "data/ICME2024_GC_ASC_dev") -> Manifest:
  """ICME 2024 ASC development: comma CSV `filename,scene_label`, names without `.wav`, an empty
  label = unlabelled (kept, label −1); audio found by the glob `*{filename}*.wav`."""
  list_path = os.path.join(root, label_file)
  rows = _unique(_read_table(list_path, delimiter=",", header=True,
                             columns=("filename", "scene_label")), "filename", list_path)
  folder = os.path.join(root, audio_dir)
  examples = []
  for name, row in rows.items():
    label = _label_index(row["scene_label"], ICME24_CLASSES, list_path, row["_row"])
    matches = sorted(glob.glob(os.path.join(folder, f"*{glob.escape(name)}*.wav")))
    if len(matches) > 1:
      raise MetadataError(f"{list_path}, row {row['_row']}: {len(matches)} audio files match "
                          f"{name!r} in {folder}: {matches[:3]}")
    path = matches[0] if matches else os.path.join(folder, f"{name}.wav")
    examples.append(Example(name, path, label, "unknown"))
  # The release does not promise one native rate (its baseline resamples to 44.1 kHz): any rate.
  return Manifest("icme24", "development", root, ICME24_CLASSES, NO_DEVICE, None, 1, 10.0,
                  False, examples)


def esc50(root: str, folds: Sequence[int] = (1, 2, 3, 4, 5)) -> Manifest:
  """ESC-50: `meta/esc50.csv` (comma, header), audio in `audio/`, 5 predefined folds."""
  meta_path = os.path.join(root, "meta", "esc50.csv")
  rows = _unique(_read_table(meta_path, delimiter=",", header=True,
                             columns=("filename", "fold", "target", "category")),
                 "filename", meta_path)
  examples = []
  for name, row in rows.items():
    label = _label_index(row["category"], ESC50_CLASSES, meta_path, row["_row"])
    if str(label) != row["target"]:
      raise MetadataError(f"{meta_path}, row {row['_row']}: target {row['target']} does not match "
                          f"category {row['category']!r} (index {label})")
    if int(row["fold"]) in folds:
      examples.append(Example(name, os.path.join(root, "audio", name), label, "unknown",
                              row.get("src_file", "")))
  return Manifest("esc50", "folds" + "".join(map(str, folds)), root, ESC50_CLASSES, NO_DEVICE,
                  44100, 1, 5.0, False, examples)


def fsdd(root: str, split: str) -> Manifest:
  """Free Spoken Digit Dataset (`{digit}_{speaker}_{take}.wav`, 8 kHz): takes 0–4 test, 5–49
  train; the speaker is the "device" (recording condition). Clips are 0.1–2.3 s: padded to 2.5 s."""
  if split not in ("train", "test"):
    raise MetadataError(f"FSDD split must be train or test, got {split!r}")
  speakers = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
  examples = []
  for path in sorted(glob.glob(os.path.join(root, "*.wav"))):
    name = os.path.basename(path)
    parts = os.path.splitext(name)[0].split("_")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
      raise MetadataError(f"{path}: FSDD names are {{digit}}_{{speaker}}_{{take}}.wav")
    if parts[1] not in speakers:
      raise MetadataError(f"{path}: unknown speaker {parts[1]!r} ({list(speakers)})")
    if (int(parts[2]) < 5) == (split == "test"):
      examples.append(Example(name, path, int(parts[0]), parts[1]))
  if not examples:
    raise MetadataError(f"{root}: no FSDD wav files")
  return Manifest("fsdd", split, root, tuple(str(d) for d in range(10)), speakers, 8000, 1, 2.5,
                  True, examples)
