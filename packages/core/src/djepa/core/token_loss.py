"""Common interface of the per-token generative loss heads (diffusion L_d, flow matching L_v).

Both heads own a :class:`~djepa.core.denoising_mlp.DenoisingMLP` as ``net`` and expose

* ``forward(target [M, C], z [M, D_z], mask [M] | None, generator=None) -> scalar`` — the
  training loss (masked mean over rows; the caller repeats rows ``diffusion_batch_mul`` times);
* ``sample(z [M, D_z], *, z_uncond=None, cfg_scale=1.0, temperature=1.0, num_steps=…,
  generator=None, clip_range=None, **solver_options) -> [M, C] float32``.

so that the model and the Algorithm-1 sampler treat them alike (§3.3, App. F). The CFG batch
doubling both samplers share is written once here (:meth:`TokenLoss.guided_fn`); the factory
:func:`djepa.core.heads.build_token_loss` lives in its own module so that this interface and
the two heads import in one direction only (no cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from djepa.core.denoising_mlp import DenoisingMLP

__all__ = ["TokenLoss", "check_token_inputs", "CfgScale"]

#: A guidance scale: one float for every row, or a ``[M]`` float tensor (one per row; the
#: sampler passes one when rows of different length are at different points of their schedule).
CfgScale = float | Tensor


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

    def _guided(self, z: Tensor, z_uncond: Tensor | None, cfg_scale: CfgScale) -> bool:
        """Whether CFG is on (a doubled batch); validates ``z_uncond``'s and ``cfg_scale``'s shape."""
        if z_uncond is None:
            return False
        if isinstance(cfg_scale, Tensor):
            if cfg_scale.shape != (z.shape[0],):
                raise ValueError(f"a per-row cfg_scale must be [{z.shape[0]}], got {tuple(cfg_scale.shape)}")
            if bool((cfg_scale == 1.0).all()):
                return False
        elif float(cfg_scale) == 1.0:
            return False
        if z_uncond.shape != z.shape:
            raise ValueError(f"z_uncond must have z's shape {tuple(z.shape)}, got {tuple(z_uncond.shape)}")
        return True

    def guided_fn(
        self,
        z: Tensor,
        z_uncond: Tensor | None,
        cfg_scale: CfgScale,
        combine: Callable[[Tensor, Tensor, float | Tensor], Tensor],
        *,
        time_scale: float = 1.0,
        plan_times: Tensor | None = None,
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """``fn(x [M, C], t [M]) -> [M, C_out] float32``: the denoising MLP with classifier-free
        guidance as ONE doubled batch ``[x; x]`` with ``[z; z_uncond]`` (shared by the diffusion
        and flow samplers).

        Args:
            z, z_uncond: ``[M, D_z]`` conditional / unconditional features (z_uncond None = no CFG).
            cfg_scale: s, a float or a per-row ``[M]`` tensor; 1 everywhere = no CFG, no doubling.
            combine: ``combine(out_cond [M, C_out], out_uncond [M, C_out], s) -> guided``, where
                ``s`` is the float or a ``[M, 1]`` tensor.
            time_scale: factor applied to ``t`` before the MLP (flow: 1000; diffusion: 1).
            plan_times: the MLP timesteps the caller will pass (already scaled); when given (and
                ``net`` is a :class:`~djepa.core.denoising_mlp.DenoisingMLP`, no grad) the
                step-independent work is done once (``sampling_plan``) — inference only.
        """
        guided = self._guided(z, z_uncond, cfg_scale)
        zz = torch.cat([z, z_uncond], dim=0) if guided else z  # type: ignore[list-item]
        kw = {}
        if plan_times is not None and isinstance(self.net, DenoisingMLP) and not torch.is_grad_enabled():
            kw = {"plan": self.net.sampling_plan(zz, plan_times)}
        scale = (lambda t: t) if time_scale == 1.0 else (lambda t: t * time_scale)
        if not guided:
            return lambda x, t: self.net(x, scale(t), zz, **kw).float()
        s = cfg_scale.float().to(z.device)[:, None] if isinstance(cfg_scale, Tensor) else float(cfg_scale)

        def fn(x: Tensor, t: Tensor) -> Tensor:
            m = x.shape[0]
            out = self.net(torch.cat([x, x], dim=0), scale(torch.cat([t, t], dim=0)), zz, **kw).float()
            return combine(out[:m], out[m:], s)

        return fn


def check_token_inputs(target: Tensor, z: Tensor, mask: Tensor | None, token_dim: int, z_dim: int) -> None:
    """Raise ``ValueError`` unless target is ``[M, C]``, z ``[M, D_z]`` and mask ``[M]`` or None."""
    if target.dim() != 2 or target.shape[1] != token_dim:
        raise ValueError(f"target must be [M, {token_dim}], got {tuple(target.shape)}")
    m = target.shape[0]
    if z.dim() != 2 or z.shape != (m, z_dim):
        raise ValueError(f"z must be [{m}, {z_dim}], got {tuple(z.shape)}")
    if mask is not None and mask.reshape(-1).shape[0] != m:
        raise ValueError(f"mask must have {m} entries, got {tuple(mask.shape)}")
