"""Shared test set-up: quiet TF, a per-session cache for the synthetic dataset."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jax_asc.native import allocator  # noqa: E402

allocator.retain_freed_memory()

import pytest  # noqa: E402


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
