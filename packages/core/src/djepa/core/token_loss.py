"""Common interface of the per-token generative loss heads (diffusion L_d, flow matching L_v).

Both heads own a :class:`~djepa.core.denoising_mlp.DenoisingMLP` as ``net`` and expose

* ``forward(target [M, C], z [M, D_z], mask [M] | None, generator=None) -> scalar`` — the
  training loss (masked mean over rows; the caller repeats rows ``diffusion_batch_mul`` times);
* ``sample(z [M, D_z], *, z_uncond=None, cfg_scale=1.0, temperature=1.0, num_steps=…,
  generator=None, clip_range=None, **solver_options) -> [M, C] float32``.

so that the model and the Algorithm-1 sampler treat them alike (§3.3, App. F).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from djepa.core.config import LossConfig

__all__ = ["TokenLoss", "build_token_loss", "check_token_inputs"]


class TokenLoss(nn.Module):
    """Base class of :class:`DiffusionLoss` and :class:`FlowMatchingLoss`.

    Attributes:
        token_dim: channels C of a token.
        z_dim: channels D_z of the conditioning feature.
        net: the denoising MLP.
        default_num_steps: sampler steps when ``sample(num_steps=None)``.
    """

    token_dim: int
    z_dim: int
    net: nn.Module
    default_num_steps: int = 100

    def forward(  # type: ignore[override]
        self,
        target: Tensor,
        z: Tensor,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        z: Tensor,
        *,
        z_uncond: Tensor | None = None,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        clip_range: tuple[float, float] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        raise NotImplementedError

    def _guided(self, z: Tensor, z_uncond: Tensor | None, cfg_scale: float) -> bool:
        """Whether CFG is on (a doubled batch); validates ``z_uncond``'s shape."""
        if z_uncond is None or float(cfg_scale) == 1.0:
            return False
        if z_uncond.shape != z.shape:
            raise ValueError(f"z_uncond must have z's shape {tuple(z.shape)}, got {tuple(z_uncond.shape)}")
        return True


def check_token_inputs(target: Tensor, z: Tensor, mask: Tensor | None, token_dim: int, z_dim: int) -> None:
    """Raise ``ValueError`` unless target is ``[M, C]``, z ``[M, D_z]`` and mask ``[M]`` or None."""
    if target.dim() != 2 or target.shape[1] != token_dim:
        raise ValueError(f"target must be [M, {token_dim}], got {tuple(target.shape)}")
    m = target.shape[0]
    if z.dim() != 2 or z.shape != (m, z_dim):
        raise ValueError(f"z must be [{m}, {z_dim}], got {tuple(z.shape)}")
    if mask is not None and mask.reshape(-1).shape[0] != m:
        raise ValueError(f"mask must have {m} entries, got {tuple(mask.shape)}")


def build_token_loss(loss_cfg: LossConfig, token_dim: int, z_dim: int) -> TokenLoss:
    """The generative head chosen by ``loss_cfg.kind`` (``"diffusion"`` or ``"flow"``).

    Raises:
        ValueError: unknown ``kind``.
    """
    if loss_cfg.kind == "diffusion":
        from djepa.core.diffusion_loss import DiffusionLoss

        return DiffusionLoss(loss_cfg, token_dim, z_dim)
    if loss_cfg.kind == "flow":
        from djepa.core.flow import FlowMatchingLoss

        return FlowMatchingLoss(loss_cfg, token_dim, z_dim)
    raise ValueError(f"unknown loss kind {loss_cfg.kind!r}; choose 'diffusion' or 'flow'")
