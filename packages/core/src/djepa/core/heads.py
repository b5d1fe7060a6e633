"""The factory of the per-token generative loss heads (§3.3 diffusion L_d, App. F flow L_v).

Kept apart from :mod:`djepa.core.token_loss` (the interface both heads implement) so that the
imports run one way: ``heads → diffusion_loss / flow → token_loss``.
"""

from __future__ import annotations

from djepa.core.config import LossConfig
from djepa.core.diffusion_loss import DiffusionLoss
from djepa.core.flow import FlowMatchingLoss
from djepa.core.token_loss import TokenLoss

__all__ = ["build_token_loss"]


def build_token_loss(loss_cfg: LossConfig, token_dim: int, z_dim: int) -> TokenLoss:
    """The generative head chosen by ``loss_cfg.kind`` (``"diffusion"`` or ``"flow"``).

    Raises:
        ValueError: unknown ``kind``.
    """
    if loss_cfg.kind == "diffusion":
        return DiffusionLoss(loss_cfg, token_dim, z_dim)
    if loss_cfg.kind == "flow":
        return FlowMatchingLoss(loss_cfg, token_dim, z_dim)
    raise ValueError(f"unknown loss kind {loss_cfg.kind!r}; choose 'diffusion' or 'flow'")
