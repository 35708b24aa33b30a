"""Shared test set-up: quiet TF, a per-session cache for the synthetic dataset, the report
chains started in the background when tests/test_launch.py is collected."""
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jax_asc.native import allocator  # noqa: E402

allocator.retain_freed_memory()

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One XLA compilation cache for the session: tests that build the same step (fits of the
  tiny config, resumed runs) compile it once. Subprocesses inherit it."""
  from jax_asc import main
  folder = str(tmp_path_factory.mktemp("xla_cache"))
  os.environ.setdefault("JAX_ASC_COMPILATION_CACHE", folder)
  main.enable_compilation_cache()
  return folder


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


def pytest_collection_modifyitems(config, items):
  """tests/test_launch.py last: its chains then run beside every other test before it waits."""
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
