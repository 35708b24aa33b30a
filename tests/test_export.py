"""LiteRT export (jax_asc/stages/litert.py, stage export): conversions checked in the LiteRT
interpreter against JAX, ops LiteRT lacks named, and a trained run exported and predicted."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from jax_asc.stages import litert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_net():
  rng = np.random.default_rng(0)
  kernel = rng.normal(0, 0.5, (3, 3, 1, 8)).astype(np.float32)
  dense = rng.normal(0, 0.5, (8, 4)).astype(np.float32)

  def net(x):                                   # (1, 16, 16) → (1, 4)
    y = jax.lax.conv_general_dilated(x[..., None], kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y).mean(axis=(1, 2)) @ dense
  return net


def test_float32_float16_and_int8_conversions_run_in_the_interpreter():
  net = _small_net()
  rng = np.random.default_rng(1)
  inputs = rng.normal(size=(40, 1, 16, 16)).astype(np.float32)
  expected = np.concatenate([np.asarray(net(x)) for x in inputs])
  results = {}
  for fmt in litert.FORMATS:
    blob = litert.convert(net, inputs[0], fmt, calibration=lambda: iter(inputs[:32]))
    interpreter = litert.Interpreter(blob)
    results[fmt] = np.concatenate([interpreter(x) for x in inputs])
    assert "DEPTHWISE_CONV_2D" in interpreter.operators()   # one input channel
  assert litert.Interpreter(blob).float_operators() == []     # the int8 graph
  scale = np.abs(expected).max()
  assert np.abs(results["float32"] - expected).max() < 1e-5 * scale
  assert np.abs(results["float16"] - expected).max() < 1e-2 * scale
  assert np.abs(results["int8"] - expected).max() < 0.1 * scale   # 8-bit activations
  assert np.abs(results["int8"] - expected).max() > 1e-5 * scale   # it is quantised


def test_an_op_litert_lacks_is_named():
  with pytest.raises(litert.UnsupportedOpError, match="sort") as error:
    litert.convert(lambda x: jnp.sort(x, axis=-1), np.zeros((2, 8), np.float32))
  assert error.value.ops == ["sort"]
  # A platform custom call (LAPACK's Cholesky) is named before conversion.
  with pytest.raises(litert.UnsupportedOpError, match="spotrf"):
    litert.convert(lambda x: jnp.linalg.cholesky(x @ x.T + 4 * jnp.eye(4)),
                   np.zeros((4, 4), np.float32))
  with pytest.raises(ValueError, match="calibration"):
    litert.convert(lambda x: x * 2, np.zeros((2,), np.float32), "int8")
  with pytest.raises(ValueError, match="float32"):
    litert.convert(lambda x: x * 2, np.zeros((2,), np.float32), "bfloat16")


def test_export_a_trained_run_and_predict_a_folder_with_the_flatbuffer(trained_tiny_run,
                                                                      tmp_path):
  """Stage export with the frontend as its own model: the files, the report and float32
  parity; then `jax_asc.predict --tflite` on a folder gives the JAX model's probabilities."""
  from jax_asc import main as main_lib
  config, workdir, test = trained_tiny_run
  config = config.copy_and_resolve_references()
  config.stage = "export"
  config.export.update(formats="float32,int8", frontend="separate", verify_clips=12,
                       calibration_clips=32, latency_runs=3)
  result = main_lib.run(config, workdir)["export"]
  folder = os.path.join(workdir, "export")
  for name in ("frontend.tflite", "model_float32.tflite", "model_int8.tflite", "report.json",
               "report.md"):
    assert os.path.exists(os.path.join(folder, name)), name
  assert json.load(open(os.path.join(folder, "report.json"))) == json.loads(json.dumps(result))
  f32, i8 = result["formats"]["float32"], result["formats"]["int8"]
  assert f32["max_abs_logit_difference"] < 1e-4 and f32["label_agreement"] == 1.0
  assert i8["bytes"] < f32["bytes"] and i8["param_bytes"] * 4 == f32["param_bytes"]
  assert 0 < f32["latency_ms_per_clip"] and f32["operators"] > 10
  assert "int8" in open(os.path.join(folder, "report.md")).read()
  assert json.load(open(os.path.join(workdir, "export.done.json")))["outputs"]["clips"] == 12
  config.export.frontend = "included"
  with pytest.raises(ValueError, match="frontend.*separate"):
    main_lib.run(config, workdir)

  audio = tmp_path / "audio"
  audio.mkdir()
  clips = test.audio("waveform", np.arange(5))[:, 0]
  for i, clip in enumerate(clips):
    soundfile.write(str(audio / f"c{i}.wav"), clip, 32000, subtype="FLOAT")
  out = tmp_path / "tflite.csv"
  run = subprocess.run([sys.executable, "-m", "jax_asc.predict", "--workdir", workdir, "--audio",
                        str(audio), "--out", str(out), "--tflite",
                        os.path.join(folder, "model_float32.tflite")], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
  assert [r[0] for r in rows] == [f"c{i}.wav" for i in range(5)]
  probs = np.array([[float(v) for v in r[2:]] for r in rows])
  from jax_asc.stages import common
  variables, _ = common.restore_variables(config, workdir, "latest")
  five = test.take(np.arange(5))
  logits = common.Inference(config, five, variables).logits(five)
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), atol=1e-5)
