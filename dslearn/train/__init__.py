"""Training: one loop core (loop.py) under the pretraining/SFT Trainer and GRPO, LR schedules, atomic
checkpoints, metrics logs."""

from .checkpoint import CheckpointError, load_checkpoint, load_model_from_checkpoint, save_checkpoint
from .loop import (
    SUMMED_METRICS,
    DivergenceError,
    FitLog,
    LoopConfig,
    MicroBatch,
    NonFiniteLossError,
    Step,
    StepFunction,
    TrainingLoop,
    make_optimizer,
    reduce_metrics,
)
from .metrics import MetricsLog, read_metrics
from .schedule import lr_at
from .trainer import TrainConfig, Trainer, TrainResult

__all__ = [
    "SUMMED_METRICS", "CheckpointError", "DivergenceError", "FitLog", "LoopConfig", "MetricsLog", "MicroBatch",
    "NonFiniteLossError", "Step", "StepFunction", "TrainConfig", "TrainResult", "Trainer", "TrainingLoop",
    "load_checkpoint", "load_model_from_checkpoint", "lr_at", "make_optimizer", "read_metrics", "reduce_metrics",
    "save_checkpoint",
]
