"""Flow matching loss L_v (App. F, Eq. 5–7) and its per-token ODE sampler.

Linear interpolation path (App. F): ``x_t = t·x + (1 − t)·ε`` with t = 0 pure noise and t = 1
data; target velocity ``v = x − ε`` (Eq. 6); loss = mean over channels of (v_θ − v)², masked
mean over rows (Eq. 7), t ~ U(0, 1) per row. The denoising MLP (``C`` outputs) receives
``1000·t`` as its timestep so that its sinusoidal embedder sees the same range as the
diffusion head's integer steps 0..999 (a scale choice of ours; any fixed scale works as long
as training and sampling agree).

Sampling integrates dx/dt = v_θ(x, t | z) from t = 0 to 1 on a grid ``t_i = i/n`` mapped by
the time shift ``t' = t / (t + s − s·t)`` (s = 1: uniform; s > 1: more steps near the noise
end), with Euler or Heun (explicit trapezoid; the corrector is applied on every step, including
the last, since v is finite at t = 1 on this path). The initial noise is ``τ·ε``: temperature
scales the starting point (the official flow sampler ignores τ; we apply it there and document
it, see ``shared/docs/FIDELITY.md``). CFG on v as for ε: v = v_u + s·(v_c − v_u), one doubled
batch only when guidance is on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from djepa.core.config import LossConfig
from djepa.core.denoising_mlp import DenoisingMLP
from djepa.core.diffusion import rand, randn
from djepa.core.functional import masked_mean
from djepa.core.token_loss import TokenLoss, check_token_inputs

__all__ = ["FlowMatchingLoss", "shift_time", "time_grid", "ode_solve", "TIME_SCALE"]

#: Factor from flow time t ∈ [0, 1] to the MLP's timestep input.
TIME_SCALE = 1000.0

VelocityFn = Callable[[Tensor, Tensor], Tensor]


def shift_time(t: Tensor | float, s: float) -> Tensor | float:
    """Time shift ``t' = t / (t + s − s·t)`` (s = 1 identity; 0 ↦ 0, 1 ↦ 1; monotone for s > 0).

    Raises:
        ValueError: ``s <= 0``.
    """
    if s <= 0:
        raise ValueError(f"time shift s must be > 0, got {s}")
    if s == 1.0:  # exact identity (t / (t + 1 − t) can round)
        return t
    return t / (t + s - s * t)


def time_grid(num_steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> Tensor:
    """``[num_steps + 1]`` float32 grid from 0 to 1: ``shift_time(i / n, shift)``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    return shift_time(t, shift).to(device=device, dtype=torch.float32)  # type: ignore[union-attr]


def ode_solve(
    velocity: VelocityFn,
    x0: Tensor,
    num_steps: int,
    solver: Literal["euler", "heun"] = "euler",
    time_shift: float = 1.0,
) -> Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 0 to 1 (float32, no grad bookkeeping).

    Args:
        velocity: ``(x [M, C], t [M] float in [0, 1]) -> [M, C]``.
        x0: ``[M, C]`` starting point (noise).
        num_steps: number of intervals (Heun uses 2 evaluations per interval).
        solver: ``"euler"`` or ``"heun"`` (explicit trapezoid on every interval).
        time_shift: s of :func:`shift_time`.

    Raises:
        ValueError: unknown solver.
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"unknown solver {solver!r}; choose 'euler' or 'heun'")
    grid = time_grid(num_steps, time_shift, device=x0.device)
    x = x0.float()
    m = x.shape[0]
    for i in range(num_steps):
        t0, t1 = grid[i], grid[i + 1]
        dt = t1 - t0
        v0 = velocity(x, t0.expand(m)).float()
        if solver == "euler":
            x = x + dt * v0
        else:
            x_pred = x + dt * v0
            v1 = velocity(x_pred, t1.expand(m)).float()
            x = x + dt * 0.5 * (v0 + v1)
    return x


class FlowMatchingLoss(TokenLoss):
    """Per-token conditional flow matching loss with a denoising MLP (App. F, Eq. 7).

    Args:
        loss_cfg: ``mlp_depth``, ``mlp_width`` and ``flow_time_shift`` (the default shift of
            :meth:`sample`) are used.
        token_dim: C.
        z_dim: D_z.

    Attributes:
        net: :class:`DenoisingMLP` with ``C`` outputs (the velocity).
    """

    def __init__(self, loss_cfg: LossConfig, token_dim: int, z_dim: int) -> None:
        super().__init__()
        self.token_dim = int(token_dim)
        self.z_dim = int(z_dim)
        self.time_shift = float(loss_cfg.flow_time_shift)
        self.default_num_steps = 100
        self.net = DenoisingMLP(
            self.token_dim, self.z_dim, loss_cfg.mlp_width, loss_cfg.mlp_depth, self.token_dim
        )

    def per_token_losses(
        self,
        target: Tensor,
        z: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``[M]`` float32: mean over channels of (v_θ(x_t, t | z) − (x − ε))²."""
        check_token_inputs(target, z, None, self.token_dim, self.z_dim)
        m = target.shape[0]
        with torch.autocast(device_type=target.device.type, enabled=False):
            x = target.float()
            if t is None:
                t = rand(m, generator=generator, device=x.device)
            if noise is None:
                noise = randn(x.shape, generator=generator, device=x.device)
            t = t.float().reshape(-1)
            noise = noise.float()
            tt = t[:, None]
            xt = tt * x + (1.0 - tt) * noise
            v_target = x - noise
        v_pred = self.net(xt, t * TIME_SCALE, z)
        with torch.autocast(device_type=target.device.type, enabled=False):
            return ((v_pred.float() - v_target) ** 2).mean(dim=-1)

    def forward(  # type: ignore[override]
        self,
        target: Tensor,
        z: Tensor,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """L_v: masked mean of the per-token loss.

        Args:
            target: ``[M, C]`` clean tokens; z: ``[M, D_z]``; mask: ``[M]`` bool/float (True = counted)
                or None; generator: draws t and ε.

        Returns:
            Scalar float32, 0 when nothing is selected.

        Raises:
            ValueError: shape mismatch.
        """
        check_token_inputs(target, z, mask, self.token_dim, self.z_dim)
        losses = self.per_token_losses(target, z, generator=generator)
        return masked_mean(losses, None if mask is None else mask.reshape(-1))

    def guided_velocity_fn(self, z: Tensor, z_uncond: Tensor | None, cfg_scale: float | Tensor,
                           times: Tensor | None = None) -> VelocityFn:
        """``velocity(x, t)`` with t in [0, 1]; CFG v = v_u + s·(v_c − v_u) on one doubled batch
        (:meth:`TokenLoss.guided_fn`). ``cfg_scale``: a float or a per-row ``[M]`` tensor.

        ``times``: the flow times in [0, 1] the solver will pass (its grid); when given the
        step-independent work is done once — inference only.
        """
        return self.guided_fn(
            z, z_uncond, cfg_scale, lambda v_c, v_u, s: v_u + s * (v_c - v_u), time_scale=TIME_SCALE,
            plan_times=None if times is None else times.float() * TIME_SCALE)

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self,
        z: Tensor,
        *,
        z_uncond: Tensor | None = None,
        cfg_scale: float | Tensor = 1.0,
        temperature: float = 1.0,
        num_steps: int | None = 100,
        solver: Literal["euler", "heun"] = "euler",
        time_shift: float | None = None,
        generator: torch.Generator | None = None,
        clip_range: tuple[float, float] | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Draw one token per row of ``z`` by integrating the flow ODE (App. F).

        Args:
            z: ``[M, D_z]``; z_uncond: ``[M, D_z]`` or None; cfg_scale: s (1 = off, no doubling).
            temperature: τ, scales the initial noise x(0) = τ·ε (the official code ignores τ).
            num_steps: ODE intervals (None = 100); solver: ``"euler"`` | ``"heun"``.
            time_shift: s of :func:`shift_time` (None = ``loss_cfg.flow_time_shift``).
            generator: draws ε; noise: optional ``[M, C]`` ε (then the generator is unused).
            clip_range: if given, each velocity evaluation is re-derived from a clamped data
                estimate, the analogue of the diffusion sampler's x̂_0 clip: x̂ = x + (1 − t)·v is
                clamped to ``[lo, hi]`` and v ← (clamp(x̂) − x) / (1 − t), consistent with the
                current x (as DDIM re-derives ε); left unchanged at t = 1 where x̂ = x. An Euler
                sample therefore ends inside the range; Heun's last corrector (at t = 1) can leave
                it slightly. The result is never clamped at the end (out-of-range values are a
                health metric, ``shared/docs/FIDELITY.md``).

        Returns:
            ``[M, C]`` float32 on z's device.
        """
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [M, {self.z_dim}], got {tuple(z.shape)}")
        n_steps = int(num_steps or self.default_num_steps)
        shift = self.time_shift if time_shift is None else float(time_shift)
        velocity = self.guided_velocity_fn(z, z_uncond, cfg_scale,
                                           times=time_grid(n_steps, shift, device=z.device))
        if clip_range is not None:
            lo, hi = float(clip_range[0]), float(clip_range[1])
            raw = velocity

            def velocity(x: Tensor, t: Tensor) -> Tensor:  # noqa: F811 - wraps the raw field
                v = raw(x, t)
                rem = (1.0 - t)[:, None]
                x_hat = x + rem * v
                safe = rem > 1e-6
                v_clip = (x_hat.clamp(lo, hi) - x) / torch.where(safe, rem, torch.ones_like(rem))
                return torch.where(safe, v_clip, v)

        if noise is None:
            noise = randn((z.shape[0], self.token_dim), generator=generator, device=z.device)
        x0 = float(temperature) * noise.float()
        # the network keeps the caller's autocast; the solver's updates are float32 elementwise ops
        return ode_solve(velocity, x0, n_steps, solver, shift)
