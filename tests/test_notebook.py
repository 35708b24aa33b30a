"""The quickstart notebook runs top to bottom (tiny config), so it cannot rot."""
import os

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_executes(tmp_path, data_dir):
  nb = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
  params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(params) == 1
  params[0].source = (f'CONFIG_ARG = "tiny"\nWORKDIR = {str(tmp_path / "wd")!r}\n'
                      f'DATA_DIR = {data_dir!r}')
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": REPO}}).execute()
  outputs = "".join(str(o.get("text", "")) + str(o.get("data", {}))
                    for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
  assert "macro acc" in outputs          # the per-device table was shown
  assert "DCASE limits" in outputs       # and the complexity table
  assert "image/png" in outputs          # and the confusion matrix
