"""The dropout layer of the model (FIDELITY.md "Model": 0.1 on attention probabilities, after
the attention projection and twice in every MLP).

:class:`Dropout` is ``nn.Dropout`` (same ``p``, ``state_dict`` and repr) whose forward goes
through the hook :func:`djepa.core.ops.dropout`: torch's ``F.dropout`` unless
:mod:`djepa.core.cpu_speed` installed its CPU mask source.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from djepa.core import ops

__all__ = ["Dropout"]


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`djepa.core.ops.dropout`.

    Shapes: any → same shape and dtype; the identity in eval mode or at ``p = 0``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return ops.dropout(x, self.p, self.training)
