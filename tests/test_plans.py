"""The plan runner (jax_asc/plans.py): which stages run again when a config changes.

The stages are replaced by a fake that records the call and writes the stage's `.done.json` as
every real stage does (`stages.common.write_done`), so these tests check the runner's decisions
alone; tests/test_launch.py runs the real report plans end to end.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from jax_asc import main, plans
from jax_asc.stages import common

CONFIG = textwrap.dedent('''
    import ml_collections
    from jax_asc import plans

    def get_config(arg=None):
      role = arg.split(",")[0]
      return ml_collections.ConfigDict(dict(
          stage="", role=role, lr=0.1, members="", evaluate=dict(split="test"),
          model_init=dict(path="", kind="passt_torch", checkpoint="best", params_only=False,
                          prefix="")))

    def get_plan():
      return plans.Plan("toy", __file__, (
          plans.Run("teachers/a", "teacher", ("train", "predict")),
          plans.Run("teachers/b", "teacher", ("train", "predict")),
          plans.Run("students/s", "student", ("ensemble", "distill", "evaluate"),
                    {"members": plans.member_paths("a")}, needs=("teachers/a",)),
          plans.Run("students/s2", "student", ("train",), init_from=plans.InitFrom(
              "students/s", "latest", params_only=True))))
    ''')


@pytest.fixture
def toy(tmp_path, monkeypatch):
  config_file = tmp_path / "toy_config.py"
  config_file.write_text(CONFIG)
  calls = []

  def fake_run(config, workdir):
    calls.append((os.path.relpath(workdir, tmp_path / "chain"), config.stage))
    os.makedirs(workdir, exist_ok=True)
    common.write_done(workdir, config.stage, config)
  monkeypatch.setattr(main, "run", fake_run)

  def run(**lr):
    plan = plans.load_plan(str(config_file))
    if lr:   # a changed hyper-parameter of one run
      runs = tuple(plans.Run(r.path, r.role, r.stages, dict(r.overrides, **lr.get(r.path, {})),
                             r.needs, r.init_from) for r in plan.runs)
      plan = plans.Plan(plan.name, plan.config, runs)
    calls.clear()
    plans.run_plan(plan, str(tmp_path / "chain"), smoke=True)
    return list(calls)
  return run, tmp_path / "chain"


def test_fresh_plan_runs_everything_then_nothing(toy):
  run, _ = toy
  assert run() == [("teachers/a", "train"), ("teachers/a", "predict"),
                   ("teachers/b", "train"), ("teachers/b", "predict"),
                   ("students/s", "ensemble"), ("students/s", "distill"),
                   ("students/s", "evaluate"), ("students/s2", "train")]
  assert run() == []


def test_changed_config_reruns_that_run_and_everything_downstream(toy):
  run, chain = toy
  run()
  # Teacher a's learning rate changes: a reruns, and so do the student that needs it and the
  # run initialised from that student; teacher b is untouched.
  assert run(**{"teachers/a": {"lr": 0.2}}) == [
      ("teachers/a", "train"), ("teachers/a", "predict"), ("students/s", "ensemble"),
      ("students/s", "distill"), ("students/s", "evaluate"), ("students/s2", "train")]
  assert run(**{"teachers/a": {"lr": 0.2}}) == []
  # A change of the student's own settings reruns it from its first stage (and s2), not a.
  assert run(**{"teachers/a": {"lr": 0.2}, "students/s": {"lr": 0.3}}) == [
      ("students/s", "ensemble"), ("students/s", "distill"), ("students/s", "evaluate"),
      ("students/s2", "train")]
  # Deleting a record redoes that stage and what follows it, in this run and downstream.
  os.remove(chain / "students" / "s" / "distill.done.json")
  assert run(**{"teachers/a": {"lr": 0.2}, "students/s": {"lr": 0.3}}) == [
      ("students/s", "distill"), ("students/s", "evaluate"), ("students/s2", "train")]


def test_records_hold_fingerprint_and_consumed_tokens(toy):
  run, chain = toy
  run()
  record = json.loads((chain / "students" / "s" / "ensemble.done.json").read_text())
  teacher = json.loads((chain / "teachers" / "a" / "predict.done.json").read_text())
  assert record["upstream"] == {"teachers/a:predict": teacher["token"]}
  distill = json.loads((chain / "students" / "s" / "distill.done.json").read_text())
  assert distill["upstream"] == {"students/s:ensemble": record["token"],
                                 "teachers/a:predict": teacher["token"]}
  # `stage` is not part of the fingerprint: every stage of a run records the same one.
  assert record["config_fingerprint"] == distill["config_fingerprint"]


def test_init_from_sets_model_init_and_plan_checks_order(toy, tmp_path):
  plan = plans.load_plan(str(tmp_path / "toy_config.py"))
  config = plans.run_config(plan, plan.runs[3], "/w", "smoke", True)
  assert config.model_init.to_dict() == {"path": "/w/students/s", "kind": "run",
                                         "checkpoint": "latest", "params_only": True,
                                         "prefix": ""}
  assert plans.dependencies(plan)[3] == [2]
  with pytest.raises(ValueError, match="needs 'teachers/z', which is not an earlier run"):
    plans.Plan("bad", "x.py", (plans.Run("students/s", "student", ("train",),
                                         needs=("teachers/z",)),))


def test_report_plans_declare_their_needs():
  for name in ("report000_dafa", "report001_joint_kd", "report002_teachers"):
    plan = plans.load_plan(f"configs/{name}.py")
    for run in plan.runs:
      for value in run.overrides.values():   # every teacher a run reads is one it needs
        for item in str(value).split(","):
          if item.startswith("{workdir}/"):
            assert item[len("{workdir}/"):] in run.all_needs(), (name, run.path, item)


def test_smoke_chains_in_the_suite_keep_the_xla_settings_their_plans_ask_for(monkeypatch,
                                                                             tmp_path):
  """The suite compiles without LLVM's optimisations (conftest.py); a chain whose plan keeps
  them (`smoke_fast_compile=False`) must not inherit that flag (report 003 ran 1.5× the CPU
  time with it), and the others keep the flag and the rest of the suite's XLA_FLAGS."""
  import chains
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1 "
                     "--xla_backend_optimization_level=0")
  for report, script in chains.SCRIPTS.items():
    plan = plans.load_plan(os.path.join("configs", script.replace(".sh", ".py")), smoke=True)
    flags = chains.chain_environment(str(tmp_path), report)["XLA_FLAGS"]
    assert "--xla_force_host_platform_device_count=1" in flags, (report, flags)
    assert ("--xla_backend_optimization_level=0" in flags) == plan.smoke_fast_compile, (
        report, flags)
  assert not chains.keeps_xla_optimisations("report002")
  assert chains.keeps_xla_optimisations("report003")
  assert chains.keeps_xla_optimisations("report004")


def test_smoke_chains_run_below_the_tests_cpu_priority():
  """The suite's chains start through `chains.lowered_priority`: a process started that way
  runs `chains.NICENESS` steps below this one (so the tests keep a core, tests/chains.py)."""
  import chains
  assert chains.NICENESS > 0
  out = subprocess.run(chains.lowered_priority(
      [sys.executable, "-c", "import os; print(os.nice(0))"]), capture_output=True, text=True,
      check=True).stdout
  assert int(out) == min(os.nice(0) + chains.NICENESS, 19)


TWO_PHASE = textwrap.dedent('''
    from configs import quickstart
    from jax_asc import plans

    def get_config(arg=None):
      config = quickstart.get_config("tiny")
      config.stage = "train"
      if arg.split(",")[0] == "frozen_backbone":
        config.optimizer.param_groups = (("(b[0-9]|stem_[0-9])/.*", {"frozen": True}),)
      return config

    def get_plan():
      return plans.Plan("two_phase", __file__, (
          plans.Run("phase1", "frozen_backbone", ("train",)),
          plans.Run("phase2", "end_to_end", ("train",),
                    init_from=plans.InitFrom("phase1", "latest", params_only=True))))
    ''')


def test_two_phase_recipe_frozen_backbone_then_end_to_end(tmp_path, data_dir):
  """Report 003's recipe shape as a plan: phase 1 trains the head on a frozen backbone, phase 2
  starts from phase 1's parameters (`init_from`, params only) and trains everything."""
  import jax
  import numpy as np
  from jax_asc import tasks
  from jax_asc.train import loop
  config_file = tmp_path / "two_phase.py"
  config_file.write_text(TWO_PHASE)
  plan = plans.load_plan(str(config_file))
  chain = tmp_path / "chain"
  plans.run_plan(plan, str(chain), smoke=True)

  phase1 = plans.run_config(plan, plan.runs[0], str(chain), "smoke", True)
  split = common.load_splits(phase1, "train")["train"]
  fresh = loop.setup(tasks.build(phase1, split), phase1,
                     common.train_data(phase1, split)).state.params
  after1 = common.restore_variables(phase1, str(chain / "phase1"), "latest")[0]["params"]
  phase2 = plans.run_config(plan, plan.runs[1], str(chain), "smoke", True)
  after2 = common.restore_variables(phase2, str(chain / "phase2"), "latest")[0]["params"]
  for name in fresh:
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh[name]),
                                                    jax.tree.leaves(after1[name])))
    assert same == (not name.startswith("head")), name   # phase 1: only the head moved
    moved = not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after1[name]),
                                                         jax.tree.leaves(after2[name])))
    assert moved, name                                   # phase 2: everything trains
  record = json.loads((chain / "phase2" / "train.done.json").read_text())
  phase1_record = json.loads((chain / "phase1" / "train.done.json").read_text())
  assert record["upstream"] == {"phase1:train": phase1_record["token"]}
  assert phase2.model_init.params_only and phase2.model_init.kind == "run"


def test_a_finished_training_stage_that_reruns_starts_afresh(toy, monkeypatch):
  """A stale train stage that had finished starts afresh when a config section it reads changed
  or a run it needs gave new results (else the loop would resume the finished checkpoint and
  train nothing); its checkpoints move to checkpoints.previous. A change it does not read
  (evaluate) lets it resume, and a stage that never finished (killed) keeps its checkpoints."""
  run, chain = toy
  seen = []
  fake = main.run

  def with_checkpoints(config, workdir):
    if config.stage == "train":
      marker = os.path.join(workdir, "checkpoints", "latest", "marker")
      seen.append((os.path.basename(workdir), os.path.exists(marker)))
      os.makedirs(os.path.dirname(marker), exist_ok=True)
      open(marker, "w").close()
    fake(config, workdir)
  monkeypatch.setattr(main, "run", with_checkpoints)
  run()
  assert seen == [("a", False), ("b", False), ("s2", False)]
  seen.clear()
  run(**{"teachers/a": {"lr": 0.2}})            # a reruns from scratch, and so does s2
  assert seen == [("a", False), ("s2", False)]
  assert (chain / "teachers" / "a" / "checkpoints.previous" / "latest" / "marker").exists()
  seen.clear()
  run(**{"teachers/a": {"lr": 0.2, "evaluate.split": "validation"}})
  assert ("a", True) in seen                     # evaluation settings only: resumes
  # Killed before it finished: no record, so the checkpoints stay and the stage resumes.
  os.remove(chain / "teachers" / "b" / "train.done.json")
  seen.clear()
  run(**{"teachers/a": {"lr": 0.2, "evaluate.split": "validation"}})
  assert seen == [("b", True)]
  # A retrained model's later training stages (its soup here) start afresh with it.
  assert plans.later_training_stages(plans.load_plan(str(chain.parent / "toy_config.py")), 0,
                                     "train") == []
  soup_dir = chain / "teachers" / "a" / "checkpoints" / "soup"
  soup_dir.mkdir(parents=True)
  (chain / "teachers" / "a" / "soup.done.json").write_text("{}")
  assert plans.start_afresh(str(chain / "teachers" / "a"), "soup") == [str(soup_dir)]
  assert not (chain / "teachers" / "a" / "soup.done.json").exists()
  assert (chain / "teachers" / "a" / "checkpoints" / "soup.previous").is_dir()


def test_later_training_stages_span_the_entries_of_a_workdir():
  plan = plans.Plan("p", "c.py", (
      plans.Run("s", "student", ("ensemble", "distill", "evaluate")),
      plans.Run("t", "teacher", ("train", "soup")),
      plans.Run("s", "student", ("finetune_device", "export"))))
  assert plans.later_training_stages(plan, 0, "distill") == ["finetune_device"]
  assert plans.later_training_stages(plan, 1, "train") == ["soup"]
  assert plans.later_training_stages(plan, 2, "finetune_device") == []
