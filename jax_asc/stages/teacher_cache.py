"""Stage `teacher_cache`: the tokens of every semantic teacher of the run (report 004 §2.3,
source "qwen_audio"), computed once over the splits it names (`teachers.<name>.splits`) into its
cache (`jax_asc/teachers/semantic.py`).

An existing cache of the same teacher and mixtures is kept; a build a crash interrupted resumes.
Writes `<workdir>/reports/teacher_cache.json`: per teacher and split the cache folder, the
mixtures, and the figures of the build that made it (seconds, mixtures/s, bytes on disk and per
1,000 mixtures, peak memory of the process, device). The stage's token is a digest of the
teachers' fingerprints and the cached mixtures, so the runs that read the cache train again only
when it changed (jax_asc/plans.py).
"""
from __future__ import annotations

import hashlib
import json

import jax

from jax_asc import teachers as teachers_lib
from jax_asc.stages import common
from jax_asc.teachers import semantic


def run(config, workdir: str) -> dict:
  specs = {name: spec for name, spec in teachers_lib.specs(config).items()
           if spec.source == semantic.SOURCE}
  if not specs:
    raise ValueError(f"stage teacher_cache: config.teachers has no {semantic.SOURCE!r} teacher "
                     f"(teachers: {sorted(teachers_lib.specs(config)) or 'none'})")
  if jax.process_count() > 1:
    raise ValueError("stage teacher_cache writes one cache folder: run it as one process (the "
                     "training runs of many hosts then read it)")
  results, digest = {}, hashlib.sha256()
  for name, spec in specs.items():
    names = [common.split_alias(config, s.strip()) for s in spec.splits.split(",") if s.strip()]
    if not names:
      raise ValueError(f"teachers.{name}.splits is empty: name the splits to cache")
    splits = common.load_splits(config, *names)
    teacher = semantic.load(name, spec)
    folder = semantic.cache_folder(name, spec, workdir)
    for split_name in names:
      meta = semantic.build(teacher, splits[split_name], folder, int(spec.batch_size))
      results[f"{name}/{split_name}"] = dict(
          folder=semantic.split_folder(folder, split_name), mixtures=meta["count"],
          tokens=meta["outputs"][semantic.OUTPUT]["shape"], **meta["build"])
      digest.update(json.dumps(meta["teacher"], sort_keys=True).encode())
      digest.update(semantic.row_fingerprints(splits[split_name]).tobytes())
  for key, r in results.items():
    print(f"teacher cache {key}: {r['mixtures']} mixtures, {r['mixtures_per_s']} mixtures/s "
          f"when built, {r['disk_bytes_per_1000'] / 2**20:.1f} MiB per 1,000 mixtures on disk, "
          f"peak memory {r['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
  files = common.write_metrics(workdir, "teacher_cache", results)
  common.write_done(workdir, "teacher_cache", config, {"reports": files},
                    token=digest.hexdigest()[:16])
  return results
