"""Training: the course's one trainer, LR schedules, atomic checkpoints, metrics logs."""

from .checkpoint import CheckpointError, load_checkpoint, load_model_from_checkpoint, save_checkpoint
from .metrics import MetricsLog, read_metrics
from .schedule import lr_at
from .trainer import DivergenceError, NonFiniteLossError, TrainConfig, Trainer, TrainResult, make_optimizer

__all__ = [
    "CheckpointError", "DivergenceError", "MetricsLog", "NonFiniteLossError", "TrainConfig", "TrainResult", "Trainer",
    "load_checkpoint", "load_model_from_checkpoint", "lr_at", "make_optimizer", "read_metrics", "save_checkpoint",
]
