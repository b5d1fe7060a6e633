"""A tiny runnable training job: ``python -m djepa.core.train.selftest`` (any launcher).

Used by the multi-process tests and as a smoke test of an installation::

    python -m djepa.core.train.selftest --output-dir /tmp/djepa_st --steps 20
    torchrun --nproc_per_node 2 -m djepa.core.train.selftest --output-dir /tmp/st2 --steps 20
    deepspeed --num_accelerators 2 --module djepa.core.train.selftest --output-dir /tmp/st3

``--model toy`` is a small deterministic network with the D-JEPA contract (no internal
randomness unless ``--noise-std`` > 0), so W ranks with micro-batch b must reproduce one rank
with micro-batch W·b; ``--model tiny`` is ``DJEPA(preset("tiny", …))``.
"""

from __future__ import annotations

import argparse
import json
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from djepa.core.cli import is_rank_zero

__all__ = ["ToyDJEPA", "ToyOutput", "toy_dataset", "main"]


class ToyOutput(NamedTuple):
    loss: Tensor
    token_loss: Tensor
    prediction_loss: Tensor


class _ToyEncoder(nn.Module):
    def __init__(self, token_dim: int, width: int) -> None:
        super().__init__()
        self.token_embed = nn.Linear(token_dim, width)
        self.blocks = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.token_embed(tokens)
        if cond is not None:
            h = h + cond[:, None]
        return self.norm(h + self.blocks(h))


class _ToyCondition(nn.Module):
    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.class_embed = nn.Embedding(num_classes, width)


class ToyDJEPA(nn.Module):
    """Stand-in with DJEPA's contract and naming: ``tokens: [B, N, D]``, ``labels: [B]`` →
    ``ToyOutput(loss, token_loss, prediction_loss)``; batch-mean losses (so gradients of W
    ranks × b samples equal one rank × W·b samples)."""

    no_weight_decay_prefixes = ("encoder.token_embed.", "condition.", "token_loss.",
                                "prediction_loss.")

    def __init__(self, token_dim: int = 4, width: int = 32, num_classes: int = 10,
                 noise_std: float = 0.0) -> None:
        super().__init__()
        self.noise_std = noise_std
        self.encoder = _ToyEncoder(token_dim, width)
        self.condition = _ToyCondition(num_classes, width)
        self.predictor = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.token_loss = nn.Sequential(nn.Linear(width, width), nn.GELU(),
                                        nn.Linear(width, token_dim))
        self.prediction_loss = nn.Linear(width, width)

    def forward(self, tokens: Tensor, labels: Tensor, *,
                target_model: "ToyDJEPA | None" = None) -> ToyOutput:
        x = tokens
        if self.training and self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)  # global RNG, like DJEPA
        h = self.encoder(x, self.condition.class_embed(labels))
        z = self.predictor(h)
        token_loss = F.mse_loss(self.token_loss(z).float(), tokens.float())
        if target_model is not None:
            with torch.no_grad():
                target = target_model.encoder(tokens).float()
            pred = F.smooth_l1_loss(self.prediction_loss(z).float(), target, beta=2.0)
        else:
            pred = token_loss.new_zeros(())
        return ToyOutput(token_loss + pred, token_loss, pred)


def toy_dataset(n: int = 64, num_tokens: int = 16, token_dim: int = 4, num_classes: int = 10,
                seed: int = 0) -> TensorDataset:
    """Class-dependent tokens plus noise: ``([n, num_tokens, token_dim] float32, [n] int64)``."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, num_tokens, token_dim, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    tokens = centers[labels] + 0.1 * torch.randn(n, num_tokens, token_dim, generator=g)
    return TensorDataset(tokens, labels)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--model", choices=["toy", "tiny"], default="toy")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--stop-at-step", type=int, default=None)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--noise-std", type=float, default=0.0)
    p.add_argument("--dataset-size", type=int, default=64)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--losses-json", default=None, help="rank 0 writes the per-step losses here")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    a = p.parse_args(argv)

    from djepa.core.train import TrainConfig, train

    torch.manual_seed(0)  # identical init on every rank (DeepSpeed also broadcasts rank 0's)
    if a.model == "toy":
        model: nn.Module = ToyDJEPA(noise_std=a.noise_std)
        data = toy_dataset(a.dataset_size)
    else:
        from djepa.core.config import preset
        from djepa.core.model import DJEPA

        model = DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10))
        data = toy_dataset(a.dataset_size)
    cfg = TrainConfig(output_dir=a.output_dir, max_steps=a.steps, stop_at_step=a.stop_at_step,
                      micro_batch_size=a.micro_batch, grad_accum_steps=a.grad_accum,
                      zero_stage=a.zero_stage, precision=a.precision, lr=a.lr,
                      weight_decay=0.0, ema_decay=0.99, checkpoint_every=a.checkpoint_every,
                      log_every=a.log_every, tensorboard=False, progress_bar=False)
    losses: list[dict[str, float]] = []
    res = train(model, data, cfg, step_callback=lambda s, l, m, e: losses.append(l),
                config_to_save={"selftest_model": a.model})
    if a.losses_json and is_rank_zero():
        with open(a.losses_json, "w") as f:
            json.dump(losses, f)
    if is_rank_zero():
        print(f"done: step {res.step} finished={res.finished} losses={res.last_losses}", flush=True)


if __name__ == "__main__":
    main()
