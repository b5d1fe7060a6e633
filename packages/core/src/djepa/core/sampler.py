"""Generalised next-token prediction with D-JEPA (paper §3.5, Algorithm 1).

Start with every (unknown) token masked, draw a random order per sample, and over K **AR steps**
reveal tokens on the cosine schedule ``mask_len_k = floor(N · cos(π/2 · (k+1)/K))`` clamped to
``[1, still_masked − 1]`` (the last step reveals everything left), as the official code does.
Each step runs φ on the known tokens, γ on all positions, and the denoising MLP's reverse process
on the tokens chosen this step, with temperature τ and classifier-free guidance (cfg scale
growing linearly with the revealed fraction, MAR/Muse). Tokens given up front (``known_tokens``
+ ``known_mask``) are never changed: the same loop then does inpainting / outpainting (App. D.4).

Rows may differ (issue 11): a :class:`~djepa.core.batch.TokenBatch` template gives each row
its length (padding), positions and which tokens to generate (``maskable``; the other real
tokens are known and kept). Each row runs the cosine schedule over its *own* unknown tokens
(and its own linear cfg schedule). With ``generators`` (one per row) every row draws its order
and its noise from its own stream in the order it would alone, so a batched sample equals each
row sampled alone and does not depend on the batch size; with one ``generator`` the whole batch
shares a stream (the first release's behaviour, bit for bit on a full grid).

CFG works with any condition kind: the unconditional half gets the model's null condition (the
null class; the null sequence). Work that does not depend on the step is done once: orders, the
schedules, condition and null states. The feature predictor's last block computes only the rows
revealed at each step. Steps that reveal nothing for every row skip the network entirely, and
the batch is doubled for CFG only when ``cfg_scale != 1``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from djepa.core.batch import TokenBatch
from djepa.core.condition import SequenceInput
from djepa.core.config import SamplerConfig
from djepa.core.model import visible_index
from djepa.core.rng import RowStreams

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


def _batch_size_of(condition) -> int | None:
    if isinstance(condition, Tensor):
        return condition.shape[0]
    if isinstance(condition, SequenceInput):
        return condition.values.shape[0]
    return None


def _orders(known: Tensor, valid: Tensor, generator: torch.Generator | None,
            generators: list[torch.Generator] | None) -> Tensor:
    """``[B, N]`` per-row orders: known positions first, then the unknown ones in uniformly
    random order, padding last. One ``rand(B, N)`` from ``generator`` (the first release's draw),
    or per row ``rand(L_b)`` over its real tokens from ``generators[b]``."""
    b, n = known.shape
    device = known.device
    if generators is None:
        keys = torch.rand(b, n, generator=generator,
                          device=generator.device if generator is not None else device).to(device)
    else:
        keys = torch.full((b, n), 2.0, device=device)
        for i, g in enumerate(generators):
            row = valid[i]
            keys[i, row] = torch.rand(int(row.sum()), generator=g, device=g.device).to(device)
    keys = keys.masked_fill(known, -1.0).masked_fill(~valid, 3.0)
    return keys.argsort(dim=-1)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    condition=None,
    config: SamplerConfig = SamplerConfig(),
    *,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    generators: list[torch.Generator] | None = None,
    batch: TokenBatch | None = None,
    known_tokens: Tensor | None = None,
    known_mask: Tensor | None = None,
    clip_range: tuple[float, float] | None = None,
    callback: Callable[[int, int, Tensor], None] | None = None,
) -> Tensor:
    """Sample tokens with Algorithm 1.

    Args:
        model: a :class:`~djepa.core.model.DJEPA` (usually the EMA weights). Put into eval mode
            for the call and restored afterwards.
        condition: ``[B] int64`` class ids, a :class:`~djepa.core.condition.SequenceInput`, or
            ``None`` for unconditional samples (the null condition; cfg is then ignored).
        config: AR steps K, cfg scale and schedule, temperature τ, denoising steps.
        batch_size: B when neither ``condition`` nor ``batch`` gives it.
        generator: one ``torch.Generator`` (on the model's device, or CPU) for the whole batch's
            orders and noise: the same seed gives bit-identical samples.
        generators: one generator per row instead (see the module docstring): batched output
            equals each row sampled alone with its generator. Exclusive with ``generator``.
        batch: a :class:`TokenBatch` template: rows of different length (``padding``), their
            ``positions``, and per row the tokens to generate (``maskable``; None = all real
            tokens). Real non-maskable tokens are known: read from ``batch.tokens``, never
            changed. Known counts may differ per row.
        known_tokens: ``[B, N, D]`` tokens to keep (inpainting/outpainting) on the model's full
            grid; read where ``known_mask`` is True (the same as a ``batch`` with
            ``maskable = ~known_mask``).
        known_mask: ``[B, N] bool, True = known`` (given, never changed); counts may differ per row.
        clip_range: clip the denoiser's x₀ prediction to this range (the tokenizer's value range,
            e.g. (−1, 1) for pixels; ``None`` for unbounded latents). See FIDELITY.md's pitfall.
        callback: ``callback(step, num_steps, tokens)`` after every AR step (progress bars);
            ``tokens`` is the live buffer, filled in place: clone it to keep a snapshot.

    Returns:
        ``[B, N, D] float32`` tokens (zeros at padding; not clamped: the fraction outside the
        value range is a health metric the caller reports).

    Raises:
        ValueError: inconsistent shapes or batch sizes, out-of-range labels, both ``batch`` and
            ``known_tokens``, both ``generator`` and ``generators``.
    """
    cfgm = model.config
    d = cfgm.token_dim
    device = next(model.parameters()).device
    if generator is not None and generators is not None:
        raise ValueError("give generator (one stream) or generators (one per row), not both")
    if (known_tokens is None) != (known_mask is None):
        raise ValueError("known_tokens and known_mask go together")
    if batch is not None and known_mask is not None:
        raise ValueError("give known tokens through batch (maskable = tokens to generate) or "
                         "known_tokens/known_mask, not both")
    sizes = {s for s in (_batch_size_of(condition), batch_size,
                         None if batch is None else batch.batch_size,
                         None if generators is None else len(generators)) if s is not None}
    if len(sizes) > 1:
        raise ValueError(f"inconsistent batch sizes {sorted(sizes)} (condition, batch_size, batch, generators)")
    if not sizes:
        raise ValueError("give a condition, batch_size or batch")
    b = sizes.pop()
    if isinstance(condition, Tensor):
        condition = condition.to(device)
    elif isinstance(condition, SequenceInput):  # every field moved (aligned, a subclass' own)
        condition = dataclasses.replace(condition, **{
            f.name: getattr(condition, f.name).to(device) for f in dataclasses.fields(condition)
            if isinstance(getattr(condition, f.name), Tensor)})

    positions = None
    if batch is None:
        n = cfgm.seq_len
        if known_mask is not None:
            if tuple(known_mask.shape) != (b, n) or tuple(known_tokens.shape) != (b, n, d):
                raise ValueError(f"known_mask must be [{b}, {n}] and known_tokens [{b}, {n}, {d}], got "
                                 f"{list(known_mask.shape)} and {list(known_tokens.shape)}")
            known = known_mask.to(device=device, dtype=torch.bool)
            tokens = torch.where(known.unsqueeze(-1), known_tokens.to(device).float(),
                                 torch.zeros((), device=device))
        else:
            known = torch.zeros(b, n, dtype=torch.bool, device=device)
            tokens = torch.zeros(b, n, d, device=device)
        padding = None
        valid = torch.ones(b, n, dtype=torch.bool, device=device)
    else:
        batch = model.as_batch(batch.to(device))
        n = batch.num_tokens
        valid, padding = batch.valid, batch.padding
        known = valid & ~batch.maskable_mask
        tokens = torch.where(known.unsqueeze(-1), batch.tokens.float(), torch.zeros((), device=device))
        positions = batch.positions

    orders = _orders(known, valid, generator, generators)
    num_known = known.sum(1).tolist()
    num_unknown = (valid & ~known).sum(1).tolist()
    schedules = [ar_schedule(u, config.num_ar_steps) for u in num_unknown]
    use_cfg = condition is not None and config.cfg_scale != 1.0 and getattr(model.condition, "kind", "class") != "none"
    state = model.condition_state(condition, b)
    if use_cfg:
        state = state.cat(model.null_state(b))
    extra = {}
    if cfgm.loss.kind == "flow":
        extra = dict(solver=config.flow_solver)
        if config.flow_time_shift is not None:
            extra["time_shift"] = config.flow_time_shift
    kw = {}
    if positions is not None:
        kw["positions"] = torch.cat([positions, positions]) if use_cfg else positions
    if padding is not None:
        kw["padding"] = torch.cat([padding, padding]) if use_cfg else padding
    arange_n = torch.arange(n, device=device)
    rank = torch.empty_like(orders).scatter_(1, orders, arange_n.expand(b, n))  # position → order
    row_offsets = (torch.arange(b, device=device) * n)[:, None]

    was_training = model.training
    model.eval()
    try:
        revealed = torch.tensor(num_known, device=device)
        for k in range(config.num_ar_steps):
            take = [sch[k].num_revealed for sch in schedules]
            if any(take):
                take_t = torch.tensor(take, device=device)
                q = max(take)
                visible_idx, visible_pad = visible_index(rank < revealed[:, None])
                slots = revealed[:, None] + torch.arange(q, device=device)[None, :]
                in_step = slots < (revealed + take_t)[:, None]
                pred_idx = orders.gather(1, slots.clamp(max=n - 1))  # [B, Q]; fillers unused
                tok_in, vis_in, pred_in = tokens, visible_idx, pred_idx
                step_kw = dict(kw)
                if visible_pad is not None:
                    step_kw["visible_padding"] = torch.cat([visible_pad, visible_pad]) if use_cfg else visible_pad
                if use_cfg:
                    tok_in, vis_in = torch.cat([tokens, tokens]), torch.cat([visible_idx, visible_idx])
                    pred_in = torch.cat([pred_idx, pred_idx])
                # γ's last block and final norm run on the rows revealed this step only
                z_sel = model.features(tok_in, state, vis_in, pred_in, **step_kw)
                sel = in_step.reshape(-1)
                z_cond = z_sel[:b].reshape(b * q, -1)[sel]
                z_uncond = z_sel[b:].reshape(b * q, -1)[sel] if use_cfg else None
                scales = [cfg_at(config.cfg_scale, config.cfg_schedule, sch[k].mask_len, max(u, 1))
                          for sch, u in zip(schedules, num_unknown)]
                if not use_cfg:
                    scale = 1.0
                elif all(sc == scales[0] for sc, t in zip(scales, take) if t):
                    scale = next(sc for sc, t in zip(scales, take) if t)
                else:
                    scale = torch.tensor(scales, device=device).repeat_interleave(take_t)
                noise_gen = generator if generators is None else RowStreams(generators, take)
                x = model.token_loss.sample(
                    z_cond, z_uncond=z_uncond, cfg_scale=scale,
                    temperature=config.temperature, num_steps=config.num_denoise_steps,
                    generator=noise_gen, clip_range=clip_range, **extra)
                flat = (pred_idx + row_offsets).reshape(-1)[sel]
                tokens.view(b * n, d)[flat] = x.float()
                revealed = revealed + take_t
            if callback is not None:
                callback(k, config.num_ar_steps, tokens)
    finally:
        model.train(was_training)
    return tokens
