"""The sampling flags every generation CLI nests (Algorithm 1, paper §3.5): one dataclass in core,
so ``image-sample``, ``image-inpaint`` and the video / audio samplers spell, document, default and
validate K, S, cfg, τ, the flow solver, the seed, the device and the precision the same way.

A CLI config nests it as a field (``sampler: SamplerFlags = field(default_factory=SamplerFlags)``);
:func:`djepa.core.cli.parse` omits the prefix, so the flags are ``--ar-steps``,
``--denoise-steps``, ``--cfg``, ``--cfg-schedule``, ``--temperature``, ``--flow-solver``,
``--seed``, ``--device``, ``--precision``, ``--compile``. :meth:`SamplerFlags.sampler_config`
maps them onto :class:`~djepa.core.config.SamplerConfig` (the sampler's own dataclass).

CLI defaults where they differ from :class:`~djepa.core.config.SamplerConfig`'s (decisions):

* ``cfg`` 3.0 (SamplerConfig: 1.0 = off): the CLIs sample class-conditionally with guidance
  on, as the paper's reported samples are (§4.1, App. C.1: cfg and τ grid-searched per model).
* ``ar_steps`` ``None`` = the number of tokens to generate, capped at 64 (the paper's efficient
  setting, §4.1 and App. C.2: 64 steps are already close to the best; SamplerConfig: a fixed 64).
* ``flow_solver`` ``"heun"`` (SamplerConfig: ``"euler"``). The paper does not name the ODE
  solver of the flow-matching sampler (App. F defines the Flow ODE and the loss only; §3.5 /
  Algorithm 1 is solver-agnostic), and FIDELITY.md records only the time shift, so neither
  default is the paper's. The CLI keeps the default its users have had (Heun: second order, the
  same number of intervals with twice the evaluations); the library keeps Euler, one evaluation
  per step. Only flow-matching models read it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from djepa.core.config import SamplerConfig

__all__ = ["SamplerFlags", "resolve_device"]


def resolve_device(spec: str) -> torch.device:
    """``auto`` → CUDA when available else CPU; anything else goes to :class:`torch.device`.

    Raises:
        djepa.core.cli.UserError: an unparsable device string, or a CUDA device on a machine
            without CUDA.
    """
    from djepa.core.cli import UserError

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise UserError(f"--device {spec!r} is not a device (use auto, cpu, cuda, cuda:1, …): {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec} requested but CUDA is not available on this machine")
    return device


@dataclass(frozen=True, kw_only=True)
class SamplerFlags:
    """Sampler settings of Algorithm 1 (paper §3.5; defaults in the module docstring)."""

    ar_steps: int | None = None
    """AR steps K (default: the number of tokens to generate, capped at 64)."""
    denoise_steps: int = SamplerConfig.num_denoise_steps
    """Reverse-process steps of the denoising MLP (respaced DDPM or ODE steps)."""
    cfg: float = 3.0
    """Classifier-free guidance scale (1 = off), on the --cfg-schedule."""
    cfg_schedule: str = SamplerConfig.cfg_schedule
    """CFG schedule: linear (MAR/Muse) or constant."""
    temperature: float = SamplerConfig.temperature
    """Temperature τ of the sampler noise (paper: 0.97–0.99 with cfg)."""
    flow_solver: str = "heun"
    """ODE solver for flow-matching models: euler or heun."""
    seed: int = 0
    """Seed of orders and noise: image i (in output order) draws from its own stream seeded
    seed + i, so the same seed gives the same images at any --batch-size."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:1, …"""
    precision: str = "bf16"
    """bf16 (autocast, as trained; fp32 denoising math) or fp32."""
    compile: bool = False
    """torch.compile the encoder/predictor blocks (Inductor, frozen weights): ~45 s once, then
    ~35 % less backbone time per AR step; worth it from a few hundred images on."""

    def prepare_model(self, model):
        """Apply ``--compile`` to a loaded model (in place); returns it."""
        if self.compile:
            from djepa.core.cpu_speed.compile import compile_backbone_for_sampling

            compile_backbone_for_sampling(model)
        return model

    def sampler_config(self, num_unknown_tokens: int) -> SamplerConfig:
        """The :class:`~djepa.core.config.SamplerConfig` for ``num_unknown_tokens`` to generate.

        Raises:
            djepa.core.cli.UserError: an invalid value (the config's own validation, as one line).
        """
        from djepa.core.cli import UserError

        if self.ar_steps is not None and self.ar_steps < 1:
            raise UserError(f"--ar-steps must be >= 1 (or left out for the default), got {self.ar_steps}")
        try:
            return SamplerConfig(num_ar_steps=self.ar_steps or max(1, min(num_unknown_tokens, 64)),
                                 cfg_scale=self.cfg, cfg_schedule=self.cfg_schedule,  # type: ignore[arg-type]
                                 temperature=self.temperature, num_denoise_steps=self.denoise_steps,
                                 flow_solver=self.flow_solver)  # type: ignore[arg-type]
        except ValueError as e:
            raise UserError(str(e)) from None

    def autocast(self, device: torch.device):
        """The autocast context of ``--precision`` on ``device``.

        Raises:
            djepa.core.cli.UserError: a precision other than bf16 / fp32.
        """
        from djepa.core.cli import UserError

        if self.precision not in ("bf16", "fp32"):
            raise UserError(f"--precision must be bf16 or fp32, got {self.precision!r}")
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)
