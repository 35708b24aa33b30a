"""Runs a test's script in a fresh Python process that sees several CPU devices."""
import os
import subprocess
import sys


def run_script(script: str, count: int = 8, timeout: float = 600) -> str:
  """The stdout of `python -c script` run with `count` CPU devices
  (`--xla_force_host_platform_device_count`, added to the suite's XLA_FLAGS, tests/conftest.py);
  fails the calling test with the tail of stderr when the script exits non-zero."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                                                    XLA_FLAGS=flags.strip()))
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout
