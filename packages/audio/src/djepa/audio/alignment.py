"""Monotonic alignment search and length regulation (Glow-TTS / Matcha-TTS style; issue 14).

Joint attention alone does not learn the text–speech alignment at LJSpeech scale, so training
finds each phoneme's duration explicitly: the phoneme encoder predicts a per-phoneme mel prior
μ_l (unit variance), and MAS (the PyPI package ``monotonic-alignment-search``, Cython) picks
the monotonic, surjective path that maximises ``Σ_t log N(x_t; μ_{a(t)}, I)`` — every frame
belongs to exactly one phoneme, phonemes in order, each phoneme ≥ 1 frame. Durations are the
path's row sums.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gaussian_log_likelihood", "maximum_path", "durations_to_path", "expand"]


def gaussian_log_likelihood(mu: Tensor, x: Tensor) -> Tensor:
    """``mu [B, L, C]``, ``x [B, T, C]`` → ``[B, L, T]``: ``−½‖x_t − μ_l‖² − ½·C·log 2π``."""
    c = mu.shape[-1]
    sq = (x * x).sum(-1)[:, None, :] - 2 * mu @ x.transpose(1, 2) + (mu * mu).sum(-1)[:, :, None]
    return -0.5 * sq - 0.5 * c * torch.log(torch.tensor(2 * torch.pi, dtype=mu.dtype))


@torch.no_grad()
def maximum_path(value: Tensor, phone_valid: Tensor, frame_valid: Tensor) -> Tensor:
    """MAS: ``value [B, L, T]`` (log-likelihoods), ``phone_valid [B, L]``, ``frame_valid [B, T]``
    (True = real) → ``path [B, L, T]`` float 0/1 of ``value``'s dtype.

    Raises:
        ValueError: a row with fewer frames than phonemes (no surjective monotonic path).
    """
    from monotonic_alignment_search import maximum_path as mas

    nl, nt = phone_valid.sum(1), frame_valid.sum(1)
    if bool((nt < nl).any()):
        i = int((nt < nl).nonzero()[0, 0])
        raise ValueError(f"row {i} has {int(nt[i])} frames for {int(nl[i])} phonemes: MAS needs frames >= phonemes")
    mask = (phone_valid[:, :, None] & frame_valid[:, None, :]).to(value.dtype)
    path = mas(value.detach().float().cpu().contiguous(), mask.float().cpu().contiguous())
    return path.to(device=value.device, dtype=value.dtype)


def durations_to_path(durations: Tensor, num_frames: int | None = None) -> Tensor:
    """Integer ``durations [B, L]`` (0 at padding) → ``path [B, L, T]`` float with
    ``path[b, l, t] = 1`` iff frame t belongs to phoneme l (T = the longest total)."""
    ends = durations.long().cumsum(1)
    starts = ends - durations.long()
    t = int(ends[:, -1].max()) if num_frames is None else num_frames
    ar = torch.arange(t, device=durations.device)
    return ((ar[None, None, :] >= starts[:, :, None]) & (ar[None, None, :] < ends[:, :, None])).float()


def expand(h: Tensor, path: Tensor) -> Tensor:
    """Length regulation: ``h [B, L, H]`` per phoneme, ``path [B, L, T]`` → ``[B, T, H]``
    (frame t gets its phoneme's vector; frames outside every phoneme get zeros)."""
    return path.transpose(1, 2).to(h.dtype) @ h
