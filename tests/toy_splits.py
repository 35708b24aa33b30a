"""Small in-memory splits for tests: named columns built by hand."""
import numpy as np

from jax_asc.data.dataset import Split


def make_split(n=23, samples=4, channels=1, name="toy", **columns):
  """A split of `n` examples: waveform (n, channels, samples) float32 counting up, label
  i % 3, recording_device 0, filename f{i}.wav, index i, plus `columns`."""
  base = dict(
      waveform=np.arange(n * channels * samples, dtype=np.float32).reshape(n, channels, samples),
      label=np.arange(n, dtype=np.int32) % 3, recording_device=np.zeros(n, np.int32),
      filename=np.array([f"f{i}.wav" for i in range(n)]), index=np.arange(n, dtype=np.int32))
  base.update(columns)
  return Split(name=name, columns=base, classes=("x", "y", "z"), devices=("a",),
               sample_rate=samples)
