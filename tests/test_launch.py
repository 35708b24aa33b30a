"""The three report chains in their --smoke mode, end to end (launch/report00*_*.sh).

The chains start in the background when the session has collected this file (tests/chains.py,
conftest.py), run concurrently and overlap with the other tests; each test then checks its
report's tables and artefacts, and that a second call resumes by skipping every finished stage.
"""
import json
import os
import pathlib
import subprocess
import tempfile
import time

import numpy as np
import pytest

import chains as chain_runs

REPO = chain_runs.REPO
SCRIPTS = chain_runs.SCRIPTS


@pytest.fixture(scope="module")
def chains(request):
  started = getattr(request.config, "jax_asc_chains", None)
  if started is None:   # collected some other way: start them here
    root = tempfile.mkdtemp(prefix="jax_asc_chains_")
    started = request.config.jax_asc_chains = (root, chain_runs.start(root))
  root, procs = started
  failed = chain_runs.wait(root, procs)
  assert not failed, "\n".join(failed)
  return pathlib.Path(root), chain_runs.environment(root)


def _tables(root, report):
  with open(root / report / "tables" / f"{report}.json") as f:
    return json.load(f)


def _resume_skips_everything(root, env, report):
  start = time.time()
  out = subprocess.run(["bash", os.path.join(REPO, "launch", SCRIPTS[report]), "--smoke",
                        "--workdir", str(root / report)], env=env, capture_output=True,
                       text=True, check=True).stdout
  runs = [line for line in out.splitlines() if line.startswith("== ")]
  assert runs and all(line.endswith("done, skipped") for line in runs), out[-2000:]
  return time.time() - start


def test_report000_chain(chains):
  root, env = chains
  data = _tables(root, "report000")
  assert data["smoke"] and data["split"] == "test"
  assert set(data["table1"]) == {"t_ce1", "t_ce2", "t_dafa", "t_ce1+t_ce2", "t_ce1+t_dafa"}
  for row in data["table1"].values():
    assert all(v is not None and 0 <= v <= 1 for v in row)
  # DSFT: every training device was fine-tuned; unseen devices keep the general model.
  before, after = data["table2"]["before"], data["table2"]["after"]
  for device in ("s4", "s5", "s6"):
    if device in before:
      assert before[device] == after[device]
  for device in ("a", "b", "c", "s1", "s2", "s3"):
    assert os.path.isdir(root / "report000" / "students" / "t_ce1+t_dafa" / "devices" / device)
  # The ensemble cache holds both members' logits in the student split's order.
  cache = root / "report000" / "students" / "t_ce1+t_dafa" / "teacher_caches" / "ensemble" / "train"
  assert np.load(cache / "logits.npy", mmap_mode="r").shape[:2] == (256, 2)
  meta = json.loads((cache / "metadata.json").read_text())
  assert meta["combine"] == "logits" and len(meta["members"]) == 2
  assert "T_CE1+T_DAFA" in (root / "report000" / "tables" / "report000.md").read_text()
  assert _resume_skips_everything(root, env, "report000") < 120


def test_report001_chain(chains):
  root, env = chains
  data = _tables(root, "report001")
  for name in ("student_ssfm", "student_dfm"):
    row = data["students"][name]
    assert 0 <= row["accuracy"] <= 1 and 0 <= row["fp16"] <= 1
    assert row["params"] > 0 and row["macs"] > 0
  assert set(data["teachers"]) == {"passt1", "passt2", "cpresnet1", "cpresnet2"}
  for teacher in data["teachers"]:
    run = root / "report001" / "teachers" / teacher
    assert (run / "soup.done.json").exists() and (run / "reports" / "soup.md").exists()
    meta = json.loads((run / "predictions" / "train" / "metadata.json").read_text())
    assert meta["checkpoint"]["which"] == "soup" and "logits" in meta["outputs"]
  # DFM trains adapters next to the student; SSFM has none.
  config = json.loads((root / "report001" / "students" / "student_dfm" / "config.json")
                      .read_text())
  assert config["loss"]["terms"]["dfm"] > 0 and config["loss"]["terms"]["ssfm"] == 0
  assert _resume_skips_everything(root, env, "report001") < 120


def test_report002_chain(chains):
  root, env = chains
  data = _tables(root, "report002")
  sizes = [data[f"cpr{s}_dirfms"]["params"] for s in ("128k", "560k", "2m", "10m")]
  assert sizes == sorted(sizes) and len(set(sizes)) == 4
  for method in ("none", "ms", "fms", "dir", "dirfms"):
    row = data[f"cpr128k_{method}"]
    assert 0 <= row["teacher"] <= 1 and 0 <= row["student"] <= 1
  assert data["cpr128k_dirfms+passt_dirfms"]["student"] is not None
  assert _resume_skips_everything(root, env, "report002") < 120
