"""Diffusion loss L_d (§3.3, Eq. 4) and its per-token DDPM sampler — MAR's ``DiffLoss``.

Training: for each row (token) draw t ~ U{0..T−1} and ε ~ N(0, I), noise the target, and
regress ε with the denoising MLP conditioned on ``z``; with ``learn_sigma`` the MLP also
outputs the ADM learned-range variance and the loss adds the VLB term (stop-gradient on the
mean). The loss is the masked mean of the per-token losses. The caller repeats each token's
``(target, z, mask)`` ``diffusion_batch_mul`` times (§3.3: "four times") so t is drawn
independently per copy.

Sampling: respaced DDPM with ``num_steps`` steps (ADM spacing, e.g. 100 of 1000),
x_T ~ N(0, I) *not* scaled by τ (MAR scales only the per-step noise σ_t), temperature τ on
σ_t, optional CFG (one doubled batch ``[cond; uncond]`` sharing x_t; guided
ε = ε_u + s·(ε_c − ε_u) on all ε channels; the learned variance from the conditional half)
and an optional x̂_0 clip range (see ``shared/docs/FIDELITY.md``, "A known pitfall").
"""

from __future__ import annotations

import torch
from torch import Tensor

from djepa.core.config import LossConfig
from djepa.core.denoising_mlp import DenoisingMLP
from djepa.core.diffusion import (
    GaussianDiffusion,
    betas_for_schedule,
    randint,
    randn,
    respaced,
    space_timesteps,
)
from djepa.core.functional import masked_mean
from djepa.core.token_loss import TokenLoss, check_token_inputs

__all__ = ["DiffusionLoss"]


class DiffusionLoss(TokenLoss):
    """Per-token diffusion loss with a denoising MLP (§3.3, App. B).

    Args:
        loss_cfg: ``num_train_timesteps``, ``beta_schedule``, ``learn_sigma``, ``mlp_depth``,
            ``mlp_width`` are used.
        token_dim: C, channels per token.
        z_dim: D_z, channels of the conditioning feature (predictor width).

    Attributes:
        net: :class:`DenoisingMLP` with ``2·C`` outputs (``learn_sigma``) or ``C``.
        diffusion: the ``num_train_timesteps``-step :class:`GaussianDiffusion`.
    """

    def __init__(self, loss_cfg: LossConfig, token_dim: int, z_dim: int) -> None:
        super().__init__()
        self.token_dim = int(token_dim)
        self.z_dim = int(z_dim)
        self.learn_sigma = bool(loss_cfg.learn_sigma)
        self.num_train_timesteps = int(loss_cfg.num_train_timesteps)
        self.beta_schedule = loss_cfg.beta_schedule
        self.default_num_steps = 100
        out = 2 * self.token_dim if self.learn_sigma else self.token_dim
        self.net = DenoisingMLP(self.token_dim, self.z_dim, loss_cfg.mlp_width, loss_cfg.mlp_depth, out)
        # The float64 tables always live on the CPU (also when the module is built under a
        # ``torch.device("meta")`` context, e.g. to count parameters without memory).
        with torch.device("cpu"):
            self.betas = betas_for_schedule(loss_cfg.beta_schedule, self.num_train_timesteps)
            self.diffusion = GaussianDiffusion(self.betas)
        self._respaced: dict[int, GaussianDiffusion] = {}

    def sampling_diffusion(self, num_steps: int) -> GaussianDiffusion:
        """The respaced diffusion with ``num_steps`` evenly spaced steps (cached)."""
        if num_steps < 1 or num_steps > self.num_train_timesteps:
            raise ValueError(f"num_steps must be in [1, {self.num_train_timesteps}], got {num_steps}")
        if num_steps not in self._respaced:
            self._respaced[num_steps] = respaced(
                self.betas, space_timesteps(self.num_train_timesteps, num_steps)
            )
        return self._respaced[num_steps]

    def per_token_losses(
        self,
        target: Tensor,
        z: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """``{"loss", "mse", "vb"}``, each ``[M]`` float32 (t drawn per row if None)."""
        check_token_inputs(target, z, None, self.token_dim, self.z_dim)
        if t is None:
            t = randint(
                self.num_train_timesteps, target.shape[0], generator=generator, device=target.device
            )
        if noise is None:
            noise = randn(target.shape, generator=generator, device=target.device)
        return self.diffusion.training_losses(lambda x, tt: self.net(x, tt, z), target, t, noise)

    def forward(  # type: ignore[override]
        self,
        target: Tensor,
        z: Tensor,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """L_d: masked mean of the per-token loss.

        Args:
            target: ``[M, C]`` clean tokens (any float dtype; used in fp32).
            z: ``[M, D_z]`` conditioning features (gradient flows into z).
            mask: ``[M]`` bool or float weights (True / 1 = counted, i.e. a masked token), or None.
            generator: draws t and ε.

        Returns:
            Scalar float32; exactly 0 (with a gradient path) when nothing is selected.

        Raises:
            ValueError: shape mismatch.
        """
        check_token_inputs(target, z, mask, self.token_dim, self.z_dim)
        losses = self.per_token_losses(target, z, generator=generator)["loss"]
        return masked_mean(losses, None if mask is None else mask.reshape(-1))

    def guided_model_fn(self, z: Tensor, z_uncond: Tensor | None, cfg_scale: float | Tensor,
                        timesteps: Tensor | None = None):
        """``model_fn(x_t, t)`` for :class:`GaussianDiffusion`, with CFG when it is on.

        With CFG the MLP sees one doubled batch ``[x_t; x_t]`` with ``[z; z_uncond]``
        (:meth:`TokenLoss.guided_fn`); the guided ε = ε_u + s·(ε_c − ε_u) covers all C ε
        channels and the variance channels come from the conditional half. Without CFG the
        batch is not doubled. ``cfg_scale``: a float or a per-row ``[M]`` tensor.

        ``timesteps``: the (original) timesteps the caller will pass, e.g. the respaced
        ``timestep_map``; when given the step-independent work is done once — inference only.
        """
        c = self.token_dim

        def combine(out_c: Tensor, out_u: Tensor, s: float | Tensor) -> Tensor:
            eps_c, eps_u = out_c[:, :c], out_u[:, :c]
            return torch.cat([eps_u + s * (eps_c - eps_u), out_c[:, c:]], dim=-1)

        return self.guided_fn(z, z_uncond, cfg_scale, combine, plan_times=timesteps)

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self,
        z: Tensor,
        *,
        z_uncond: Tensor | None = None,
        cfg_scale: float | Tensor = 1.0,
        temperature: float = 1.0,
        num_steps: int | None = 100,
        generator: torch.Generator | None = None,
        clip_range: tuple[float, float] | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Draw one token per row of ``z`` by respaced DDPM (§3.3).

        Args:
            z: ``[M, D_z]`` conditioning features.
            z_uncond: ``[M, D_z]`` unconditional features (null class) for CFG, or None.
            cfg_scale: guidance scale s (a float, or ``[M]`` per row); 1.0 (or no ``z_uncond``) =
                no guidance, no doubled batch.
            temperature: τ, multiplies the per-step noise σ_t only (x_T is not scaled).
            num_steps: respaced steps (ADM spacing over ``num_train_timesteps``); None = 100.
            generator: draws x_T and every step's noise.
            clip_range: clamp x̂_0 to ``[lo, hi]`` before each posterior mean (None = no clip,
                right for unbounded VAE latents).
            noise: optional ``[M, C]`` x_T.

        Returns:
            ``[M, C]`` float32 on z's device.
        """
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [M, {self.z_dim}], got {tuple(z.shape)}")
        diffusion = self.sampling_diffusion(int(num_steps or self.default_num_steps))
        model_fn = self.guided_model_fn(z, z_uncond, cfg_scale,
                                        timesteps=diffusion.timestep_map.to(z.device))
        return diffusion.p_sample_loop(
            model_fn,
            (z.shape[0], self.token_dim),
            device=z.device,
            noise=noise,
            temperature=temperature,
            clip_range=clip_range,
            generator=generator,
        )
