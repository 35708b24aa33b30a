"""The notebooks: built from notebooks/build.py, the quickstart run top to bottom (tiny config),
and the install cell from a git URL and from a local folder. The report notebooks run on the
finished smoke chains, in each chain's background process (tests/chains.py), and
tests/test_launch.py checks what they showed."""
import os
import subprocess
import sys

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "notebooks"))

import build  # noqa: E402


def execute(name, parameters, **kwargs):
  """Runs notebooks/<name> with its parameters cell replaced; returns its text outputs."""
  nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
  cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(cells) == 1
  cells[0].source = "import os\nINSTALL, SOURCE, PIP_ARGS = False, '', []\n" + "\n".join(
      f"{k} = {v!r}" for k, v in parameters.items())
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": REPO}}, **kwargs).execute()
  return "".join(o.get("text", "") if o.output_type == "stream" else str(o.get("data", {})) + "\n"
                 for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)


def test_the_notebooks_are_what_build_writes():
  for filename, built in build.notebooks().items():
    committed = nbformat.read(os.path.join(REPO, "notebooks", filename), as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in built.cells], (
        f"notebooks/{filename} differs from notebooks/build.py: run python notebooks/build.py")


def test_quickstart_notebook_executes(tmp_path, data_dir):
  outputs = execute("quickstart.ipynb", {"CONFIG_ARG": "tiny", "WORKDIR": str(tmp_path / "wd"),
                                         "DATA_DIR": data_dir})
  assert "macro acc" in outputs          # the per-device table was shown
  assert "DCASE limits" in outputs       # and the complexity table
  assert "image/png" in outputs          # and the confusion matrix


def _install_cell(source, target, cwd):
  """The parameters and install cells of the quickstart, run as a script with INSTALL = True
  (pip without dependencies into `target`: they are this environment's)."""
  nb = build.quickstart()
  script = "\n".join([nb.cells[1].source, "INSTALL = True", f"SOURCE = {source!r}",
                      f"PIP_ARGS = ['--no-deps', '--no-build-isolation', '--target', "
                      f"{str(target)!r}]", nb.cells[2].source])
  return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True,
                        timeout=600)


def test_the_install_cell_takes_a_git_url_or_a_local_folder(tmp_path):
  for name, source in (("url", f"file://{REPO}"), ("folder", REPO)):
    target, cwd = tmp_path / name / "site", tmp_path / name
    cwd.mkdir()
    result = _install_cell(source, target, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(target / "jax_asc" / "stages" / "train.py")
    assert os.path.exists(target / "configs" / "quickstart.py")
    cloned = cwd / "jax_asc_repo"
    assert cloned.is_dir() == (name == "url")
    assert f"repository: {cloned if name == 'url' else REPO}" in result.stdout
  empty = _install_cell("", tmp_path / "none", tmp_path)
  assert empty.returncode != 0 and "set SOURCE" in empty.stderr
