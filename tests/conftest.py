"""Shared test set-up: quiet TF, a per-session cache for the synthetic dataset, the report
chains started in the background when tests/test_launch.py is collected."""
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite compiles hundreds of small programs: without LLVM's optimisations XLA compiles them
# faster than it loses in running them (the smoke chains do the same, jax_asc/plans.py). Float
# semantics do not change (no fast math either way). Set XLA_FLAGS to override.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

from jax_asc.native import allocator  # noqa: E402

allocator.retain_freed_memory()

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One XLA compilation cache for the session: tests that build the same step (fits of the
  tiny config, resumed runs) compile it once. Subprocesses inherit it.

  Every program goes in, however quickly it compiled (runs keep only those over 0.5 s): the
  suite's programs compile in tens of milliseconds each, and the same ones come back under new
  jit objects (each run's trainer, evaluation and metrics) and in the subprocesses, which then
  load them (tests/test_native_build.py runs tests/test_fast_layers.py again against the AVX2
  build: the programs call the kernels by name, so there they call the AVX2 build's)."""
  import jax
  from jax_asc import main
  folder = str(tmp_path_factory.mktemp("xla_cache"))
  os.environ.setdefault("JAX_ASC_COMPILATION_CACHE", folder)
  main.enable_compilation_cache()
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  return folder


@pytest.fixture(autouse=True)
def torch_on_one_thread():
  """The PyTorch references run on one thread: on a loaded 2-core machine (the chains run beside
  the tests) torch's two OpenMP threads wait on each other and took 4-13× the CPU time of one
  (a reference run of tests/test_training_parity.py: 4.7-16 CPU-s against 1.2). Only the
  summation order of some float32 reductions can change, as with any other core count."""
  torch = sys.modules.get("torch")
  if torch is not None and torch.get_num_threads() != 1:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A fresh synthetic-dataset cache for the session (never the user's ~/.cache)."""
  path = tmp_path_factory.mktemp("jax_asc_data")
  os.environ["JAX_ASC_DATA_DIR"] = str(path)
  return str(path)


@pytest.fixture
def tiny_config(data_dir):
  from configs import quickstart
  config = quickstart.get_config("tiny")
  config.data.cache_dir = data_dir
  return config


@pytest.fixture(scope="session")
def trained_tiny_run(tmp_path_factory, data_dir):
  """(config, workdir, test split) of a tiny quickstart run: one epoch, then fine-tuned on
  device a (stage finetune_device, at a large learning rate so that its model differs). Tests of
  prediction and export read it; only stage export writes into it (its own folder)."""
  from configs import quickstart
  from jax_asc import main as main_lib
  from jax_asc.stages import common
  config = quickstart.get_config("tiny")
  config.data.cache_dir = data_dir
  config.stage = "train,finetune_device"
  config.num_epochs = 1
  config.dsft.update(devices="a", num_epochs=1, batch_size=8, learning_rate=0.05)
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  main_lib.run(config, workdir)
  test = common.load_splits(config, "test")["test"]
  return config, workdir, test


# The suite's three parts (`pytest -m unit|integration|chains`, `make test-unit` …): unit tests
# of pure functions and small pieces (seconds each); integration tests that train, build native
# kernels or compare with the PyTorch references (tens of seconds each); the report chains and
# the notebook, end to end (minutes). A test file not named here is a unit test.
INTEGRATION = {"test_training.py", "test_trainer.py", "test_accelerator_path.py",
               "test_training_parity.py", "test_param_groups.py", "test_native_build.py",
               "test_passt.py", "test_bench_reference.py", "test_data_parity.py",
               "test_augment_parity.py", "test_losses_sharded.py", "test_fast_layers.py",
               "test_plans.py", "test_toy_tasks.py", "test_teachers.py", "test_multihost.py",
               "test_predict_folder.py", "test_export.py", "test_teacher_zoo.py",
               "test_tfds.py", "test_track_head.py", "test_m2d.py", "test_resunetk.py",
               "test_s5_data.py", "test_s5_tasks.py", "test_qwen_audio.py",
               "test_semantic_teacher.py", "test_beats.py", "test_fewshot.py",
               "test_contrastasc.py", "test_report003_students.py"}
CHAINS = {"test_launch.py", "test_notebook.py"}


@pytest.hookimpl(tryfirst=True)   # before `-m` deselects by these markers
def pytest_collection_modifyitems(config, items):
  """Marks each test with its part; tests/test_launch.py last: its chains then run beside every
  other test before it waits."""
  for item in items:
    name = os.path.basename(str(item.fspath))
    part = "chains" if name in CHAINS else "integration" if name in INTEGRATION else "unit"
    item.add_marker(getattr(pytest.mark, part))
  items.sort(key=lambda item: "test_launch.py" in item.nodeid)


def pytest_collection_finish(session):
  """Starts the smoke chains of tests/test_launch.py now (see tests/chains.py)."""
  if any(item.nodeid.startswith("tests/test_launch.py") or "test_launch.py" in item.nodeid
         for item in session.items):
    import chains
    root = tempfile.mkdtemp(prefix="jax_asc_chains_")
    session.config.jax_asc_chains = (root, chains.start(root))


def pytest_sessionfinish(session):
  started = getattr(session.config, "jax_asc_chains", None)
  if started:
    import chains
    root, procs = started
    chains.stop(procs)
    shutil.rmtree(root, ignore_errors=True)
