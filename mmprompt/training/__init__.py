"""Training: config, losses, schedules, EMA, checkpoints, data-parallel helpers and the loop."""

from .checkpoint import read_checkpoint
from .config import TrainConfig
from .distributed import (DistInfo, barrier, broadcast_object, dist_info, gather_objects,
                          init_distributed, is_main_process, reduce_metrics)
from .ema import EMA
from .losses import MODEL_INPUT_KEYS, Seq2SeqLoss, batch_weight, forward_logits, seq2seq_loss
from .loop import NonFiniteLossError, TrainResult, seed_everything, train
from .sampling import epoch_batches, micro_batches_per_epoch
from .schedule import build_scheduler, lr_at, lr_multiplier
from .weights import load_weights, named_trainable

__all__ = ["EMA", "MODEL_INPUT_KEYS", "DistInfo", "NonFiniteLossError", "Seq2SeqLoss",
           "TrainConfig", "TrainResult", "barrier", "batch_weight", "broadcast_object",
           "build_scheduler", "dist_info", "epoch_batches", "forward_logits", "gather_objects",
           "init_distributed", "is_main_process", "load_weights", "lr_at", "lr_multiplier",
           "micro_batches_per_epoch", "named_trainable", "read_checkpoint", "reduce_metrics",
           "seed_everything", "seq2seq_loss", "train"]
