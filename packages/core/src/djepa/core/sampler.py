"""Generalised next-token prediction with D-JEPA (paper §3.5, Algorithm 1).

Start with every (unknown) token masked, draw a random order per sample, and over K **AR steps**
reveal tokens on the cosine schedule ``mask_len_k = floor(N · cos(π/2 · (k+1)/K))`` clamped to
``[1, still_masked − 1]`` (the last step reveals everything left), as the official code does.
Each step runs φ on the known tokens, γ on all positions, and the denoising MLP's reverse process
on the tokens chosen this step, with temperature τ and classifier-free guidance (cfg scale
growing linearly with the revealed fraction, MAR/Muse). Tokens given up front (``known_tokens``
+ ``known_mask``) are never changed: the same loop then does inpainting / outpainting (App. D.4).

Work that does not depend on the step is done once: orders, the schedule, condition and null
embeddings. The feature predictor's last block computes only the rows revealed at each
step. Steps that reveal nothing (possible when K > N) skip the network entirely, and the
batch is doubled for CFG only when ``cfg_scale != 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from djepa.core.config import SamplerConfig
from djepa.core.masking import random_orders

__all__ = ["ARStep", "ar_schedule", "cfg_at", "generate"]


@dataclass(frozen=True)
class ARStep:
    """One AR step of the schedule: ``num_revealed`` tokens leave the mask; ``mask_len`` tokens
    are still masked afterwards by the official formula (used by the linear cfg schedule)."""

    num_revealed: int
    mask_len: int


def ar_schedule(num_tokens: int, num_ar_steps: int) -> list[ARStep]:
    """The cosine schedule of Algorithm 1 for ``N = num_tokens`` unknown tokens and K steps.

    ``mask_len_k = max(1, min(remaining − 1, floor(N · cos(π/2 · (k+1)/K))))``; step k reveals
    ``remaining − mask_len_k`` tokens, the last step reveals all that remain (official code).
    For K > N some steps reveal nothing. ``sum(num_revealed) == N`` always.

    Raises:
        ValueError: ``num_ar_steps < 1`` or ``num_tokens < 0``.
    """
    if num_ar_steps < 1:
        raise ValueError(f"num_ar_steps must be >= 1, got {num_ar_steps}")
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    steps, remaining = [], num_tokens
    for k in range(num_ar_steps):
        mask_len = math.floor(num_tokens * math.cos(math.pi / 2.0 * (k + 1) / num_ar_steps))
        mask_len = max(1, min(remaining - 1, mask_len))
        revealed = remaining if k == num_ar_steps - 1 else max(0, remaining - mask_len)
        steps.append(ARStep(revealed, mask_len))
        remaining -= revealed
    return steps


def cfg_at(cfg_scale: float, schedule: str, mask_len: int, num_tokens: int) -> float:
    """CFG scale at a step: ``linear`` → ``1 + (cfg − 1)·(N − mask_len)/N``; ``constant`` → cfg."""
    if schedule == "linear":
        return 1.0 + (cfg_scale - 1.0) * (num_tokens - mask_len) / num_tokens
    if schedule == "constant":
        return cfg_scale
    raise ValueError(f"unknown cfg schedule {schedule!r}; use 'linear' or 'constant'")


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    labels: Tensor | None,
    config: SamplerConfig = SamplerConfig(),
    *,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    known_tokens: Tensor | None = None,
    known_mask: Tensor | None = None,
    clip_range: tuple[float, float] | None = None,
    callback: Callable[[int, int, Tensor], None] | None = None,
) -> Tensor:
    """Sample tokens with Algorithm 1.

    Args:
        model: a :class:`~djepa.core.model.DJEPA` (usually the EMA weights). Put into eval mode
            for the call and restored afterwards.
        labels: ``[B] int64`` class ids, or ``None`` for unconditional samples (null class;
            cfg is then ignored).
        config: AR steps K, cfg scale and schedule, temperature τ, denoising steps.
        batch_size: B when ``labels`` is ``None``.
        generator: ``torch.Generator`` (on the model's device, or CPU) for orders and noise: the
            same seed gives bit-identical samples.
        known_tokens: ``[B, N, D]`` tokens to keep (inpainting/outpainting); read where
            ``known_mask`` is True.
        known_mask: ``[B, N] bool, True = known`` (given, never changed). Every row must have the
            same number of known tokens.
        clip_range: clip the denoiser's x₀ prediction to this range (the tokenizer's value range,
            e.g. (−1, 1) for pixels; ``None`` for unbounded latents). See FIDELITY.md's pitfall.
        callback: ``callback(step, num_steps, tokens)`` after every AR step (progress bars);
            ``tokens`` is the live buffer, filled in place: clone it to keep a snapshot.

    Returns:
        ``[B, N, D] float32`` tokens (not clamped: the fraction outside the value range is a
        health metric the caller reports).

    Raises:
        ValueError: inconsistent shapes, out-of-range labels, unequal known counts per row.
    """
    cfgm = model.config
    n, d = cfgm.seq_len, cfgm.token_dim
    device = next(model.parameters()).device
    if labels is not None:
        labels = labels.to(device)
        b = labels.shape[0]
        if batch_size is not None and batch_size != b:
            raise ValueError(f"batch_size {batch_size} does not match {b} labels")
    elif batch_size is not None:
        b = batch_size
    else:
        raise ValueError("give labels or batch_size")

    if (known_tokens is None) != (known_mask is None):
        raise ValueError("known_tokens and known_mask go together")
    if known_mask is not None:
        if tuple(known_mask.shape) != (b, n) or tuple(known_tokens.shape) != (b, n, d):
            raise ValueError(f"known_mask must be [{b}, {n}] and known_tokens [{b}, {n}, {d}], got "
                             f"{list(known_mask.shape)} and {list(known_tokens.shape)}")
        known_mask = known_mask.to(device=device, dtype=torch.bool)
        counts = known_mask.sum(1)
        if b and not bool((counts == counts[0]).all()):
            raise ValueError("every row of known_mask must have the same number of known tokens")
        num_known = int(counts[0]) if b else 0
        tokens = torch.where(known_mask.unsqueeze(-1), known_tokens.to(device).float(),
                             torch.zeros((), device=device))
    else:
        num_known = 0
        tokens = torch.zeros(b, n, d, device=device)

    # Orders: known positions first, then a uniformly random permutation of the unknown ones.
    orders = random_orders(b, n, device=device, generator=generator, first=known_mask)

    num_unknown = n - num_known
    schedule = ar_schedule(num_unknown, config.num_ar_steps)
    use_cfg = labels is not None and config.cfg_scale != 1.0
    cond = model.condition(labels, b)
    if use_cfg:
        cond = torch.cat([cond, model.condition.null(b)], dim=0)
    extra = {}
    if cfgm.loss.kind == "flow":
        extra = dict(solver=config.flow_solver)
        if config.flow_time_shift is not None:
            extra["time_shift"] = config.flow_time_shift

    was_training = model.training
    model.eval()
    try:
        revealed = num_known
        for k, step in enumerate(schedule):
            if step.num_revealed > 0:
                visible = orders[:, :revealed].sort(dim=1).values
                pred_idx = orders[:, revealed:revealed + step.num_revealed]
                tok_in, vis_in = tokens, visible
                if use_cfg:
                    tok_in, vis_in = torch.cat([tokens, tokens]), torch.cat([visible, visible])
                # γ's last block and final norm run on the rows revealed this step only
                z_sel = model.features(tok_in, cond, vis_in,
                                       torch.cat([pred_idx, pred_idx]) if use_cfg else pred_idx)
                z_sel = z_sel.reshape(-1, z_sel.shape[-1])
                z_cond, z_uncond = z_sel.chunk(2) if use_cfg else (z_sel, None)
                scale = cfg_at(config.cfg_scale, config.cfg_schedule, step.mask_len, max(num_unknown, 1))
                x = model.token_loss.sample(
                    z_cond, z_uncond=z_uncond, cfg_scale=scale if use_cfg else 1.0,
                    temperature=config.temperature, num_steps=config.num_denoise_steps,
                    generator=generator, clip_range=clip_range, **extra)
                tokens.scatter_(1, pred_idx.unsqueeze(-1).expand(-1, -1, d),
                                x.float().reshape(b, step.num_revealed, d))
                revealed += step.num_revealed
            if callback is not None:
                callback(k, len(schedule), tokens)
    finally:
        model.train(was_training)
    return tokens
