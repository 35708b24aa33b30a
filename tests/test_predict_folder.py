"""`python -m jax_asc.predict`: a folder of audio at any rate and channel count, predicted by a
trained run (jax_asc/predict.py, jax_asc/data/folder.py)."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from jax_asc.data import audio_io, folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_windows_cover_every_sample_and_pad_short_clips():
  clip = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
  short = folder.windows(clip[:, :4], 6)
  assert short.shape == (1, 2, 6)
  np.testing.assert_array_equal(short[0, :, :4], clip[:, :4])
  assert not short[0, :, 4:].any()
  np.testing.assert_array_equal(folder.windows(clip, 10)[0], clip)
  exact = folder.windows(clip, 5)
  np.testing.assert_array_equal(np.concatenate(list(exact), axis=1), clip)
  ragged = folder.windows(clip, 4)            # 0-4, 4-8, and 6-10 ending at the clip's end
  assert ragged.shape == (3, 2, 4)
  np.testing.assert_array_equal(ragged[2], clip[:, 6:])
  np.testing.assert_array_equal(ragged[1], clip[:, 4:8])
  with pytest.raises(ValueError, match="positive"):
    folder.windows(clip, 0)


def test_find_audio_is_recursive_sorted_and_names_an_empty_folder(tmp_path):
  (tmp_path / "b").mkdir()
  for name in ("z.wav", "a.FLAC", "b/c.ogg", "notes.txt", ".hidden.wav"):
    (tmp_path / name).write_bytes(b"")
  assert folder.find_audio(str(tmp_path)) == ["a.FLAC", "b/c.ogg", "z.wav"]
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no audio files"):
    folder.find_audio(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="missing"):
    folder.find_audio(str(tmp_path / "missing"))


def test_read_clip_downmixes_resamples_and_names_what_a_multichannel_run_cannot_take(tmp_path):
  rng = np.random.default_rng(0)
  stereo = rng.uniform(-0.5, 0.5, (8000, 2)).astype(np.float32)
  path = str(tmp_path / "s.wav")
  soundfile.write(path, stereo, 16000, subtype="FLOAT")
  mono = folder.read_clip(path, sample_rate=16000, channels=1)
  np.testing.assert_allclose(mono[0], stereo.mean(axis=1), atol=1e-7)
  np.testing.assert_array_equal(folder.read_clip(path, sample_rate=16000, channels=2),
                                stereo.T)
  up = folder.read_clip(path, sample_rate=32000, channels=1)
  assert up.shape == (1, 16000)
  np.testing.assert_allclose(up, audio_io.resample(mono, 16000, 32000), atol=1e-6)
  with pytest.raises(audio_io.BadAudioError, match="2 channel.*trained on 4-channel"):
    folder.read_clip(path, sample_rate=16000, channels=4)


def test_device_map_matches_paths_or_unique_base_names(tmp_path):
  path = tmp_path / "map.csv"
  path.write_text("filename\tdevice_id\naudio/x.wav\ta\naudio/y.wav\tunknown\n"
                  "audio/gone.wav\tb\n")
  mapping = folder.read_device_map(str(path))
  assert mapping == {"audio/x.wav": "a", "audio/y.wav": "unknown", "audio/gone.wav": "b"}
  devices, unmatched = folder.match_device_map(["x.wav", "audio/y.wav", "new.wav"], mapping)
  assert devices == ["a", "unknown", ""] and unmatched == ["audio/gone.wav"]
  # Two files with the listed base name: neither is matched by base name (ambiguous).
  devices, _ = folder.match_device_map(["p/x.wav", "q/x.wav"], mapping)
  assert devices == ["", ""]
  comma = tmp_path / "map2.csv"
  comma.write_text("filename,device_id\nx.wav,a\n")
  assert folder.read_device_map(str(comma)) == {"x.wav": "a"}
  bad = tmp_path / "bad.csv"
  bad.write_text("file,device\nx.wav,a\n")
  with pytest.raises(ValueError, match="lacks column"):
    folder.read_device_map(str(bad))


def _read(path):
  with open(path, newline="") as f:
    rows = list(csv.reader(f, delimiter="\t"))
  return rows[0], {r[0]: np.array([float(v) for v in r[2:]]) for r in rows[1:]}, rows[1:]


def _softmax(logits):
  z = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def test_predict_a_folder_matches_the_model_on_the_same_clips(trained_tiny_run, tmp_path):
  """Files at the run's rate give the model's own probabilities; a file two clips long gives
  the mean of their logits; a 44.1 kHz stereo copy is read, resampled and downmixed; a corrupt
  file is listed with its reason and the others are still predicted."""
  from jax_asc.stages import common
  config, workdir, test = trained_tiny_run
  variables, _ = common.restore_variables(config, workdir, "latest")
  logits = common.Inference(config, test, variables).logits(test)
  audio = tmp_path / "audio"
  (audio / "sub").mkdir(parents=True)
  clips = test.audio("waveform", np.arange(6))[:, 0]     # (6, 32000) at 32 kHz
  for i in range(4):
    soundfile.write(str(audio / f"clip{i}.wav"), clips[i], 32000, subtype="FLOAT")
  soundfile.write(str(audio / "sub" / "long.flac"), np.concatenate([clips[4], clips[5]]), 32000,
                  subtype="PCM_24")
  stereo = audio_io.resample(clips[0], 32000, 44100)
  soundfile.write(str(audio / "stereo44k.wav"), np.stack([stereo, stereo], 1), 44100,
                  subtype="FLOAT")
  (audio / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
  out = tmp_path / "pred" / "predictions.csv"
  result = subprocess.run(
      [sys.executable, "-m", "jax_asc.predict", "--workdir", workdir, "--audio", str(audio),
       "--out", str(out), "--batch-size", "4"], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "predict: 7/7 files" in result.stderr and "broken.wav" in result.stderr
  header, probs, rows = _read(out)
  assert header == ["filename", "scene_label", *test.classes]
  assert [r[0] for r in rows] == ["clip0.wav", "clip1.wav", "clip2.wav", "clip3.wav",
                                  "stereo44k.wav", "sub/long.flac"]
  expected = _softmax(logits)
  for i in range(4):
    np.testing.assert_allclose(probs[f"clip{i}.wav"], expected[i], atol=2e-5)
  np.testing.assert_allclose(probs["sub/long.flac"], _softmax((logits[4] + logits[5]) / 2),
                             atol=2e-4)   # 24-bit PCM
  np.testing.assert_allclose(probs["stereo44k.wav"], expected[0], atol=0.02)
  assert all(r[1] == test.classes[int(np.argmax(probs[r[0]]))] for r in rows)
  with open(str(out) + ".unreadable.tsv") as f:
    unreadable = list(csv.reader(f, delimiter="\t"))
  assert unreadable[0] == ["filename", "problem"] and unreadable[1][0] == "broken.wav"
  assert "corrupt" in unreadable[1][1] or "unreadable" in unreadable[1][1]


def test_predict_routes_files_by_device_map(trained_tiny_run, tmp_path):
  """With a device map, files of a fine-tuned device go to `devices/<d>/`, `unknown` to the
  run's checkpoint; a listed file that is absent is reported, an unlisted file and a device
  without a model are errors."""
  from jax_asc.stages import common
  from jax_asc.stages import predict_folder as predict
  config, workdir, test = trained_tiny_run
  audio = tmp_path / "audio"
  audio.mkdir()
  clips = test.audio("waveform", np.arange(3))[:, 0]
  for i in range(3):
    soundfile.write(str(audio / f"c{i}.wav"), clips[i], 32000, subtype="FLOAT")
  device_map = tmp_path / "map.tsv"
  device_map.write_text("filename\tdevice_id\naudio/c0.wav\ta\naudio/c1.wav\tunknown\n"
                        "audio/c2.wav\ta\naudio/gone.wav\tunknown\n")
  out = str(tmp_path / "p.csv")
  lines = []
  summary = predict.predict_folder(workdir, str(audio), out, device_map=str(device_map),
                                   log=lines.append)
  assert summary["models"] == {"general": 1, "a": 2}
  assert summary["unreadable"] == [("audio/gone.wav", f"listed in the device map "
                                    f"{device_map} but not found under {audio}")]
  _, probs, _ = _read(out)
  # What predict knows of the run: data.json, or for a run older than it, the training split.
  recorded = common.run_data(config, workdir)
  assert recorded == common.run_data(config, str(tmp_path / "older_run"))
  assert recorded["num_samples"] == 32000 and recorded["channels"] == 1
  three = test.take(np.arange(3))
  general, tuned = (_softmax(common.Inference(
      config, three, common.restore_variables(config, w, "latest")[0]).logits(three))
      for w in (workdir, os.path.join(workdir, "devices", "a")))
  assert np.abs(general - tuned).max() > 1e-3   # the two models tell apart
  for i, model in ((0, tuned), (1, general), (2, tuned)):
    np.testing.assert_allclose(probs[f"c{i}.wav"], model[i], atol=2e-5)
  device_map.write_text("filename\tdevice_id\naudio/c0.wav\tb\naudio/c1.wav\tunknown\n"
                        "audio/c2.wav\ta\n")
  with pytest.raises(ValueError, match=r"device\(s\) \['b'\]"):
    predict.predict_folder(workdir, str(audio), out, device_map=str(device_map),
                           log=lines.append)
  device_map.write_text("filename\tdevice_id\naudio/c0.wav\ta\n")
  with pytest.raises(ValueError, match="2 audio file.*not in the device map"):
    predict.predict_folder(workdir, str(audio), out, device_map=str(device_map),
                           log=lines.append)


def test_chunks_unusable_files_links_and_an_all_bad_folder(trained_tiny_run, tmp_path):
  """Files in chunks of two (one chunk entirely unreadable) land on their own rows; a linked
  folder is read once; a folder with no usable file is an error that lists why."""
  from jax_asc.stages import common
  from jax_asc.stages import predict_folder as predict
  config, workdir, test = trained_tiny_run
  audio = tmp_path / "audio"
  (audio / "real").mkdir(parents=True)
  clips = test.audio("waveform", np.arange(3))[:, 0]
  for i, name in ((0, "a0.wav"), (1, "d1.wav"), (2, "e2.wav")):
    soundfile.write(str(audio / "real" / name), clips[i], 32000, subtype="FLOAT")
  for name in ("b_bad.wav", "c_bad.wav"):
    (audio / "real" / name).write_bytes(b"")
  os.symlink(audio / "real", audio / "link")               # the same folder under a link
  os.symlink(audio, audio / "real" / "loop")               # and a cycle
  names = folder.find_audio(str(audio))
  assert names == [f"link/{n}"
                   for n in ("a0.wav", "b_bad.wav", "c_bad.wav", "d1.wav", "e2.wav")]
  out = str(tmp_path / "p.csv")
  summary = predict.predict_folder(workdir, str(audio / "real"), out, files_per_chunk=2,
                                   log=lambda line: None)
  assert summary["files"] == 3 and [n for n, _ in summary["unreadable"]] == ["b_bad.wav",
                                                                            "c_bad.wav"]
  _, probs, rows = _read(out)
  assert [r[0] for r in rows] == ["a0.wav", "d1.wav", "e2.wav"]
  three = test.take(np.arange(3))
  logits = common.Inference(config, three,
                            common.restore_variables(config, workdir, "latest")[0]).logits(three)
  for i, name in enumerate(["a0.wav", "d1.wav", "e2.wav"]):
    np.testing.assert_allclose(probs[name], _softmax(logits)[i], atol=2e-5)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "x.wav").write_bytes(b"")
  with pytest.raises(ValueError, match="none of the 1 audio files"):
    predict.predict_folder(workdir, str(bad), str(tmp_path / "q.csv"), log=lambda line: None)
  assert "empty file" in (tmp_path / "q.csv.unreadable.tsv").read_text()
