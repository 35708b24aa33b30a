"""One module per stage; `STAGES` maps `config.stage` names to their `run(config, workdir)`.

| stage | what it does |
|---|---|
| train | fit the model (teacher or student) with the configured loss |
| distill | train with a teacher term required (cached-ensemble KD, online feature KD) |
| predict | cache this run's named outputs per split for students (`predictions/<split>/`) |
| ensemble | gather the cache teachers' member predictions (`teachers.<name>.runs`), score them |
| soup | average the best-k checkpoints into `checkpoints/soup` |
| finetune_device | DSFT: one fine-tuned copy per device, device-routed evaluation |
| evaluate | score a checkpoint on a split (and in float16) |
| submit | the DCASE 2025 submission file for an evaluation set, routed by device |
| export | LiteRT flatbuffers (float32, float16, int8), checked in the LiteRT interpreter |
| system_eval | report 004: taggers' labels query the separator; CAPI-SDRi and label accuracies |
| teacher_cache | report 004: a frozen semantic teacher's tokens of the clean sources, cached |
| inference_checkpoint | the trained model without its training-only parts (projector, teachers) |
| fewshot | report 003: K-shot transfer and retrieval mAP of an embedding on other datasets |
"""
from jax_asc.stages import (ensemble, evaluate, export, fewshot, finetune_device,
                            inference_checkpoint, predict, soup, submit, system_eval,
                            teacher_cache, train)

STAGES = {"train": train.run, "distill": train.run_distill, "predict": predict.run,
          "ensemble": ensemble.run, "soup": soup.run, "finetune_device": finetune_device.run,
          "evaluate": evaluate.run, "submit": submit.run, "export": export.run,
          "system_eval": system_eval.run, "teacher_cache": teacher_cache.run,
          "inference_checkpoint": inference_checkpoint.run, "fewshot": fewshot.run}
