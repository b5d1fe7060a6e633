"""djepa.core.train: the DeepSpeed training engine shared by every modality (DESIGN.md §4).

Public API::

    from djepa.core.train import TrainConfig, train
    result = train(model, dataset, TrainConfig(output_dir="runs/x", max_steps=1000,
                                               micro_batch_size=32))

Start it plainly (one process), with ``torchrun --nproc_per_node N …`` or with
``deepspeed --num_gpus N …`` (GPUs) / ``deepspeed --num_accelerators N …`` (CPU). See
:mod:`djepa.core.train.engine` for the precision, ZeRO-3 and non-finite-loss decisions and
:mod:`djepa.core.train.checkpoint` for the checkpoint layout.
"""

from djepa.core.train.checkpoint import CheckpointError
from djepa.core.train.config import TrainConfig, deepspeed_config
from djepa.core.train.engine import NonFiniteLossError, TrainResult, train
from djepa.core.train.params import no_weight_decay_names, param_groups
from djepa.core.train.schedules import lr_at, weight_decay_at

__all__ = ["TrainConfig", "TrainResult", "train", "CheckpointError", "NonFiniteLossError",
           "deepspeed_config", "no_weight_decay_names", "param_groups", "lr_at",
           "weight_decay_at"]
