"""The model learns to read its context (a learning check, tiny model, CPU).

Every grid row of a sample holds one random vector (4 rows × 4 columns, token = the row's
vector ~ N(0, I₄)). A masked token is then exactly its visible row-mates, and nothing else
tells it apart: the class is constant and every position has the same N(0, I) marginal. A model
whose context path works (encoder gathers the visible tokens, the predictor scatters them back
to their positions, RoPE tells rows apart) predicts a masked token with one row-mate visible
far better than with nothing visible. E[x | z] is the flow head's velocity at t = 0 from x_t = 0
(x = x_t + v at t = 0). A bug that scrambles positions or drops visible tokens leaves the error
at the no-context level 1.0; the first release's 16-token image model never had to pass this
(a centred digit is drawable from its class and position alone, docs/results/video.md).
"""

from __future__ import annotations

import torch

from djepa.core.config import preset
from djepa.core.model import DJEPA, visible_index


def _rows(b: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(b, 4, 1, 4, generator=g).expand(b, 4, 4, 4).reshape(b, 16, 4).contiguous()


def _estimate_mse(model: DJEPA, x: torch.Tensor, mask: torch.Tensor) -> float:
    vi, vp = visible_index(~mask)
    state = model.condition_state(torch.zeros(x.shape[0], dtype=torch.long), x.shape[0])
    z = model.features(x, state, vi, visible_padding=vp)
    rows = mask.reshape(-1)
    zz, xx = z.reshape(-1, z.shape[-1])[rows], x.reshape(-1, 4)[rows]
    est = model.token_loss.net(torch.zeros_like(xx), torch.zeros(xx.shape[0]), zz)
    return float(((est - xx) ** 2).mean())


def test_masked_token_is_read_from_its_row_mates():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cfg = preset("tiny", token_dim=4, grid=(4, 4), num_classes=1, pos_embed="rope", embed_norm=False,
                 loss=dict(kind="flow"), mask_ratio_min=0.1, mask_ratio_std=0.5)
    model = DJEPA(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(300):
        x = _rows(64, g)
        loss = model(x, torch.zeros(64, dtype=torch.long), target_model=model).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        x = _rows(256, g)
        one = torch.zeros(256, 16, dtype=torch.bool)
        one[:, 5] = True  # row 1, column 1: three row-mates and twelve other tokens visible
        every = torch.ones(256, 16, dtype=torch.bool)
        mse_one, mse_none = _estimate_mse(model, x, one), _estimate_mse(model, x, every)
    assert mse_none > 0.8, mse_none  # nothing visible: the N(0, I) prior, error ≈ 1
    assert mse_one < 0.3, (mse_one, mse_none)  # measured 0.09 (one token masked anywhere)
