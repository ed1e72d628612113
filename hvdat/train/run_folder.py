"""The files of a training run folder (`--out`), named once for the launcher, the workers and the plots."""

CONFIG_FILE = "config.json"  # the frozen TrainConfig
METRICS = "metrics.jsonl"  # one JSON object per epoch
TRAIN_LOG = "logs/train.log"  # every rank's output
