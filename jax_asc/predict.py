"""`python -m jax_asc.predict`: scene labels for a folder of audio from a trained run.

    python -m jax_asc.predict --workdir RUN --audio DIR --out predictions.csv
        [--checkpoint latest|best|soup] [--device-map LIST] [--fp16] [--batch-size N]
        [--tflite RUN/export/model_<format>.tflite]

The second entry point beside jax_asc/main.py. Every .wav, .flac and .ogg under DIR is read at
any rate and channel count, brought to the run's rate, channels and clip length, and predicted;
unusable files are listed with the reason in <out>.unreadable.tsv. Details:
jax_asc/stages/predict_folder.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jax_asc.predict", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="the trained run's folder")
  parser.add_argument("--audio", required=True, help="folder of audio files (searched "
                      "recursively)")
  parser.add_argument("--out", required=True, help="predictions file to write (TAB-separated)")
  parser.add_argument("--checkpoint", default="latest", help="latest, best or soup (default "
                      "latest)")
  parser.add_argument("--device-map", default=None, help="filename → device_id list: route "
                      "each file to its device-specific model")
  parser.add_argument("--fp16", action="store_true", help="float16 weights and inputs")
  parser.add_argument("--batch-size", type=int, default=None, help="windows per batch "
                      "(default: the run's evaluate.batch_size)")
  parser.add_argument("--tflite", default=None, help="predict with this exported LiteRT model "
                      "(stage export's model_<format>.tflite) instead of the checkpoint")
  args = parser.parse_args(argv)
  from jax_asc.native import allocator
  allocator.retain_freed_memory()   # before JAX starts its threads (jax_asc/native/allocator.py)
  from jax_asc.stages import predict_folder as predict_lib
  predict_lib.predict_folder(args.workdir, args.audio, args.out, checkpoint=args.checkpoint,
                             device_map=args.device_map, fp16=args.fp16,
                             batch_size=args.batch_size, tflite=args.tflite,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
