"""Prediction (JEPA) loss L_p (§3.2, Eq. 2) with the projector u_θ (App. B).

``L_p = mean over masked tokens of smooth_L1_β(u_θ(z_i), sg(g_i)).mean(channels)`` where z_i is
the feature predictor's output, g_i the target encoder's (EMA) feature for the same token
(detached here as well), and u_θ a two-layer MLP
``Linear(D_p, 4·D_p) → GELU → LayerNorm(4·D_p, eps 1e-6) → Linear(4·D_p, D_e)`` — the order of
timm's ``Mlp(norm_layer=...)`` that the official constructor uses (FIDELITY.md: "GELU, LayerNorm
on the hidden layer"). ``order="norm_first"`` keeps this package's earlier
``Linear → LayerNorm → GELU → Linear`` for runs trained with it. β = 2.0 as in the official code
(``shared/docs/FIDELITY.md``). The reduction runs in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from djepa.core.functional import masked_mean

__all__ = ["PredictionLoss", "Projector", "PROJECTOR_ORDERS"]

PROJECTOR_ORDERS = ("official", "norm_first")


class Projector(nn.Sequential):
    """u_θ. Children (names fixed, so state-dict keys ``projector.{0,1,3}.*`` are those of earlier
    checkpoints): ``0`` Linear(D_p, 4·D_p), ``1`` LayerNorm(4·D_p, eps 1e-6), ``2`` GELU,
    ``3`` Linear(4·D_p, D_e).

    ``order="official"`` runs 0 → 2 → 1 → 3 (Linear → GELU → LayerNorm → Linear, timm ``Mlp``
    with ``norm_layer``); ``"norm_first"`` runs 0 → 1 → 2 → 3.
    Shapes: ``[..., D_p]`` → ``[..., D_e]``.
    """

    def __init__(self, pred_dim: int, hidden: int, target_dim: int, order: str = "official") -> None:
        if order not in PROJECTOR_ORDERS:
            raise ValueError(f"projector order must be one of {PROJECTOR_ORDERS}, got {order!r}")
        super().__init__(nn.Linear(pred_dim, hidden), nn.LayerNorm(hidden, eps=1e-6), nn.GELU(),
                         nn.Linear(hidden, target_dim))
        self.order = order

    def forward(self, z: Tensor) -> Tensor:  # type: ignore[override]
        fc1, norm, act, fc2 = self
        h = fc1(z)
        h = norm(act(h)) if self.order == "official" else act(norm(h))
        return fc2(h)


class PredictionLoss(nn.Module):
    """Projector u_θ + smooth-L1 regression onto the target encoder's features.

    Args:
        pred_dim: D_p, predictor width (input of u_θ).
        target_dim: D_e, target-encoder width (output of u_θ).
        beta: smooth-L1 threshold β (> 0).
        order: ``"official"`` (Linear → GELU → LayerNorm → Linear) or ``"norm_first"`` (see
            :class:`Projector`).

    Init: xavier-uniform Linear weights, zero biases, LayerNorm weight 1 / bias 0.
    Parameter count for 768 → 768: 4,728,576.
    """

    def __init__(self, pred_dim: int, target_dim: int, beta: float = 2.0, order: str = "official") -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"smooth-L1 beta must be > 0, got {beta}")
        hidden = 4 * pred_dim
        self.pred_dim = pred_dim
        self.target_dim = target_dim
        self.beta = float(beta)
        self.projector = Projector(pred_dim, hidden, target_dim, order)
        for module in self.projector:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def per_token(self, z: Tensor, target: Tensor) -> Tensor:
        """``[..., ]`` float32 smooth-L1 averaged over channels (target detached)."""
        pred = self.projector(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return F.smooth_l1_loss(
                pred.float(), target.detach().float(), reduction="none", beta=self.beta
            ).mean(dim=-1)

    def forward(self, z: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        """L_p over masked tokens.

        Args:
            z: ``[B, N, D_p]`` predicted features.
            target: ``[B, N, D_e]`` target-encoder features (no gradient reaches it).
            mask: ``[B, N]`` bool (True = masked, i.e. counted) or float weights; None = all.

        Returns:
            Scalar float32; exactly 0 when nothing is masked.

        Raises:
            ValueError: shape mismatch.
        """
        if z.shape[-1] != self.pred_dim or target.shape[-1] != self.target_dim:
            raise ValueError(
                f"z must end in {self.pred_dim} and target in {self.target_dim} channels, "
                f"got {tuple(z.shape)} and {tuple(target.shape)}"
            )
        if z.shape[:-1] != target.shape[:-1]:
            raise ValueError(f"z {tuple(z.shape)} and target {tuple(target.shape)} differ in token dims")
        if mask is not None and mask.shape != z.shape[:-1]:
            raise ValueError(f"mask must be {tuple(z.shape[:-1])}, got {tuple(mask.shape)}")
        return masked_mean(self.per_token(z, target), mask)
