"""Writes the Colab notebooks of notebooks/ from one description, so their shared cells
(parameters, install, accelerator detection) stay the same in every notebook.

    python notebooks/build.py        # rewrites notebooks/*.ipynb

tests/test_notebook.py checks the committed notebooks equal what this writes and executes them.
"""
import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

INSTALL = '''\
# Install: on Colab (or with INSTALL = True) jax_asc comes from SOURCE, a git URL (https://…,
# file://…) or a local folder, and is pip-installed with its pinned dependencies; PIP_ARGS are
# extra pip arguments. Otherwise the notebook runs in the repository it sits in.
import os, subprocess, sys

IN_COLAB = "google.colab" in sys.modules
INSTALL = INSTALL or IN_COLAB


def install(source, pip_args=()):
    """The repository folder of `source` (a git URL is cloned next to the notebook), installed."""
    if os.path.isdir(source):
        repo = os.path.abspath(source)
    else:
        repo = os.path.abspath("jax_asc_repo")
        if not os.path.exists(repo):
            subprocess.run(["git", "clone", "--depth", "1", source, repo], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", repo, *pip_args], check=True)
    if "COLAB_TPU_ADDR" in os.environ or os.path.exists("/dev/accel0"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "jax[tpu]==0.10.2"],
                       check=True)
    return repo


if INSTALL:
    if not SOURCE:
        raise ValueError("set SOURCE (or $JAX_ASC_SOURCE) to jax_asc's git URL or folder")
    REPO_DIR = install(SOURCE, PIP_ARGS)
elif os.path.basename(os.getcwd()) == "notebooks":
    REPO_DIR = os.path.dirname(os.getcwd())
else:
    REPO_DIR = os.getcwd()
os.chdir(REPO_DIR)   # configs/ and launch/ live here
print("repository:", REPO_DIR)'''

DETECT = '''\
# Which accelerator is there? JAX uses all local devices (data parallel over a mesh).
import jax
print("JAX", jax.__version__, "| backend:", jax.default_backend(), "| devices:", jax.devices())'''

SHARED_PARAMETERS = '''\
INSTALL = False      # True: install jax_asc from SOURCE first (always on Colab)
SOURCE = os.environ.get("JAX_ASC_SOURCE", "")   # git URL or folder of jax_asc
PIP_ARGS = []'''

REPORTS = {
    "report000_dafa": dict(
        title="Report 000 — DAFA: two PaSST teachers, a CP-Mobile student, device-specific "
              "fine-tuning",
        text="Three PaSST teachers (two with cross-entropy, one with the DCSL + GDAL "
             "device-aware feature alignment), students distilled from each teacher and from "
             "two ensembles (table 1), DSFT per device (table 2) and the LiteRT export of the "
             "DSFT run's general model.",
        script="launch/report000_dafa.sh", dataset="TAU Urban Acoustic Scenes 2022 Mobile",
        extra='["--passt-checkpoint", "passt-s-f128-p16-s10-ap.476-swa.pt"] with the real data'),
    "report001_joint_kd": dict(
        title="Report 001 — joint output and feature distillation",
        text="Four teachers (two PaSST, two CP-ResNet) with their own mel settings, an ensemble "
             "of their outputs, and CP-Mobile students with the SSFM or DFM feature loss.",
        script="launch/report001_joint_kd.sh", dataset="TAU Urban Acoustic Scenes 2022 Mobile",
        extra="[]"),
    "report002_teachers": dict(
        title="Report 002 — what makes a good teacher",
        text="Teachers of five architectures (CP-ResNet from 128 K to 10 M parameters, "
             "CP-Mobile as the student's own architecture, CRNN, ViT, PaSST), the device "
             "generalisation methods (none, MixStyle, Freq-MixStyle, DIR, DIR + Freq-MixStyle), "
             "the students distilled from each teacher and from ensembles, and the student "
             "without KD, on 1-s segments.",
        script="launch/report002_teachers.sh", dataset="TAU Urban Acoustic Scenes 2020 Mobile",
        extra="[]"),
    "report003_contrastasc": dict(
        title="Report 003 — ContrastASC: contrastive fine-tuning of BEATs and CRD into "
              "CP-Mobile",
        text="BEATs teachers (the linear probe, CE-only fine-tuning, contrastive fine-tuning "
             "with the mixup-aware soft SupCon and a cosine or linear head, each in two "
             "phases), CP-Mobile students with LayerNorm at 16 kHz (no KD, KD, CRD; the norm "
             "ablations; five sizes), and the few-shot evaluation on unseen classes: tables 1-3 "
             "and figure 2.",
        script="launch/report003_contrastasc.sh",
        dataset="TAU Urban Acoustic Scenes 2022 Mobile",
        extra='["--beats", "BEATs_iter3_plus_AS2M.pt", "--tut17", "TUT17", "--icme24", '
              '"ICME24"] with the real data'),
    "report004_s5": dict(
        title="Report 004 — S5: M2D tagging with masked self-distillation and Qwen2-Audio "
              "semantic distillation, and the ResUNetK separator",
        text="Six M2D taggers of K = 3 event tracks (1c and 4c; the DCASE baseline, "
             "report 004's permutation-invariant masked self-distillation with an EMA teacher, "
             "and its semantic distillation from a frozen Qwen2-Audio encoder, cached once, "
             "with CKA and cosine terms), whose labels query the label-conditioned ResUNetK "
             "separator; tables 1 and 2 (CAPI-SDRi, mixture- and source-level label accuracy).",
        script="launch/report004_s5.sh", dataset="DCASE 2026 Task 4 data (dev_set/, eval_set/)",
        extra='["--m2d", "weights_ep69it3124-0.47998.pth", "--resunetk", "resunetk.ckpt", '
              '"--qwen", "Qwen2-Audio-7B"] with the real data'),
}


def _code(source, tags=()):
  cell = nbformat.v4.new_code_cell(source)
  if tags:
    cell.metadata["tags"] = list(tags)
  return cell


def _notebook(cells):
  nb = nbformat.v4.new_notebook(cells=cells)
  nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3",
                                     "language": "python"},
                      "language_info": {"name": "python"},
                      "accelerator": "TPU", "colab": {"provenance": []}})
  return nb


def quickstart():
  return _notebook([
      nbformat.v4.new_markdown_cell(
          "# jax_asc quickstart\n\nTrains the DCASE25 CP-Mobile student on the embedded "
          "synthetic acoustic scenes (10 scene classes,\n9 simulated devices, S4–S6 unseen in "
          "training) and evaluates it per device, the same run as\n`make demo`. On Colab choose "
          "a TPU or GPU runtime; on a CPU it takes a few minutes."),
      _code("# Parameters (the test suite runs this notebook with CONFIG_ARG = \"tiny\").\n"
            "import os\n" + SHARED_PARAMETERS + "\nCONFIG_ARG = \"\"\n"
            "WORKDIR = \"workdirs/notebook_quickstart\"\n"
            "DATA_DIR = \"\"  # synthetic dataset cache; \"\" = $JAX_ASC_DATA_DIR or "
            "~/.cache/jax_asc", tags=("parameters",)),
      _code(INSTALL),
      _code(DETECT),
      _code("# Train and evaluate: the same entry point as `python -m jax_asc.main`.\n"
            "from configs import quickstart\nfrom jax_asc import main\n\n"
            "config = quickstart.get_config(CONFIG_ARG or None)\n"
            "config.data.cache_dir = DATA_DIR\nresults = main.run(config, WORKDIR)"),
      _code("# The per-device table and the complexity table, as written to the workdir.\n"
            "from IPython.display import Markdown, Image, display\n\n"
            "display(Markdown(open(os.path.join(WORKDIR, \"reports\", \"test.md\")).read()))\n"
            "display(Markdown(open(os.path.join(WORKDIR, \"reports\", "
            "\"complexity.md\")).read()))"),
      _code("# Confusion matrix of the test split.\n"
            "display(Image(filename=os.path.join(WORKDIR, \"reports\", "
            "\"test_confusion.png\")))"),
  ])


def report(name):
  spec = REPORTS[name]
  report_id = name.split("_")[0]
  return _notebook([
      nbformat.v4.new_markdown_cell(
          f"# {spec['title']}\n\n{spec['text']}\n\nThe chain is `{spec['script']}` "
          f"(the plan in `configs/{name}.py`). With `SMOKE = True` it runs on the synthetic "
          "scenes with tiny models (minutes on a CPU; the test suite runs it so); with the "
          f"real data set `SMOKE = False` and `DATASET_ROOT` to the {spec['dataset']} folder, "
          "on a GPU or TPU runtime. A finished stage is skipped when the chain runs again, so "
          "an interrupted notebook continues where it stopped."),
      _code("# Parameters (the test suite runs this notebook with SMOKE = True).\n"
            "import os\n" + SHARED_PARAMETERS + "\nSMOKE = True\nDATASET_ROOT = \"\"\n"
            f"WORKDIR = \"workdirs/{report_id}\"\n"
            f"EXTRA_ARGS = []   # e.g. {spec['extra']}\nJOBS = 1",
            tags=("parameters",)),
      _code(INSTALL),
      _code(DETECT),
      _code("# The chain: every run of the plan, stale stages only, its output streamed.\n"
            f"command = [\"bash\", \"{spec['script']}\", \"--workdir\", WORKDIR, \"--jobs\", "
            "str(JOBS), *EXTRA_ARGS]\n"
            "command += [\"--smoke\"] if SMOKE else [DATASET_ROOT]\n"
            "with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,\n"
            "                      text=True) as chain:\n"
            "    for line in chain.stdout:\n"
            "        if line.startswith(\"== \") or \"error\" in line.lower():\n"
            "            print(line, end=\"\")\n"
            "if chain.returncode:\n"
            "    raise RuntimeError(f\"the chain failed (exit {chain.returncode}): see the "
            "lines above\")"),
      _code("# The report's tables, our figures beside the report's.\n"
            "from IPython.display import Image, Markdown, display\n\n"
            f"tables = os.path.join(WORKDIR, \"tables\")\n"
            f"display(Markdown(open(os.path.join(tables, \"{report_id}.md\")).read()))"),
      _code("# Its plots (jax_asc/eval/plots.py).\n"
            "for name in sorted(os.listdir(tables)):\n"
            "    if name.endswith(\".png\"):\n"
            "        display(Image(filename=os.path.join(tables, name)))"),
  ])


def notebooks():
  """{file name: notebook} of every notebook."""
  out = {"quickstart.ipynb": quickstart()}
  out.update({f"{name}.ipynb": report(name) for name in REPORTS})
  return out


if __name__ == "__main__":
  for filename, nb in notebooks().items():
    nbformat.write(nb, os.path.join(HERE, filename))
    print("wrote", os.path.join(HERE, filename))
