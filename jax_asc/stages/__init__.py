"""One module per stage; `STAGES` maps `config.stage` names to their `run(config, workdir)`."""
from jax_asc.stages import evaluate, train

STAGES = {"train": train.run, "evaluate": evaluate.run}
