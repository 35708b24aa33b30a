"""`python -m jax_asc.build_tfds`: the TFDS records a run's config reads with
`data.source = "tfds"`, built once per dataset and setting.

    python -m jax_asc.build_tfds --config configs/cp_mobile_dcase25.py \\
        --config.data.root=/data/tau22 --data_dir gs://bucket/tfds [--overwrite] [--whole_clips]

The third entry point beside jax_asc/main.py and jax_asc/predict.py. It reads `data.root` (the
builder's manual folder; `data.split_dir` for TAU's split files) with the files source's readers
and writes the dataset (`data/tfds_builders.py`, `jax_asc_<data.name>`) in the config the run's
data settings name, as ArrayRecord files under `--data_dir` (default `data.tfds_dir`). With
`data.segment_seconds` > 0 it writes the segments (faster to read than whole clips cut at run
time); `--whole_clips` writes the whole clips instead. A dataset already built there is kept
(and said so) unless `--overwrite`. A run then needs only `--config.data.source=tfds
--config.data.tfds_dir=…`.

(`tfds build jax_asc_<name> --imports jax_asc.data.tfds_builders --file_format array_record`
does the same where tensorflow-datasets' command line runs; in 4.9.10 it needs apache-beam.)
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402


def build(data_config, data_dir: str, *, whole_clips: bool = False, overwrite: bool = False):
  """Writes the records of `data_config` (a config's `data`) under `data_dir`; returns the
  builder. A dataset already built there is kept unless `overwrite`."""
  import tensorflow_datasets as tfds
  from jax_asc.data import tfds_builders, tfds_source
  if not data_dir:
    raise ValueError("no --data_dir and data.tfds_dir is empty: say where to write")
  root = data_config.root or None
  rendered = data_config.name in ("synthetic", "s5_synthetic")
  if not rendered and (not root or not os.path.isdir(root)):
    raise FileNotFoundError(f"data.root {root!r} is not a folder: point it at the "
                            f"{data_config.name} dataset (the builder's manual_dir)")
  configs = tfds_source.builder_configs(data_config)
  builder = tfds_builders.make_builder(
      data_config.name, configs[-1] if whole_clips else configs[0], data_dir,
      file_format="array_record", cache_dir=data_config.cache_dir,
      split_dir=data_config.split_dir)
  if builder.is_prepared() and not overwrite:
    print(f"{builder.data_dir} is already built: kept (--overwrite builds it again)")
    return builder
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=root, download_mode=mode))
  return builder


def _define_flags():
  """The command line's flags: defined only when run as a program, so importing `build` (tests,
  benchmarks) beside `jax_asc.main` defines no second --config."""
  config = config_flags.DEFINE_config_file("config", None, "Config file (configs/<x>.py[:arg]).",
                                           lock_config=True)
  data_dir = flags.DEFINE_string("data_dir", None, "Where to write (default: data.tfds_dir).")
  whole = flags.DEFINE_bool("whole_clips", False, "Write whole clips even with segment_seconds.")
  overwrite = flags.DEFINE_bool("overwrite", False, "Build again if already built.")
  flags.mark_flags_as_required(["config"])
  return config, data_dir, whole, overwrite


def main(argv, config_flag, data_dir_flag, whole_flag, overwrite_flag):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  data_config = config_flag.value.data
  builder = build(data_config, data_dir_flag.value or data_config.tfds_dir,
                  whole_clips=whole_flag.value, overwrite=overwrite_flag.value)
  splits = {name: split.num_examples for name, split in builder.info.splits.items()}
  skipped = {name: len(s["skipped"]) for name, s in builder.info.metadata["splits"].items()
             if s["skipped"]}
  print(f"{builder.data_dir}: {splits}" + (f"; skipped bad files: {skipped} (listed in "
                                          f"metadata.json)" if skipped else ""))


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: main(argv, *_flags))
