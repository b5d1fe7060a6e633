"""Shared numerical helpers."""

import torch

from djepa.core.functional import gather_rows, masked_mean


def test_masked_mean_weights_and_empty_mask():
    v = torch.tensor([2.0, 4.0, 100.0])
    assert masked_mean(v, torch.tensor([True, True, False])).item() == 3.0
    assert masked_mean(v, torch.tensor([0.25, 0.25, 0.0])).item() == 3.0  # fractional weights
    empty = masked_mean(v.requires_grad_(), torch.zeros(3, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.equal(v.grad, torch.zeros(3))


def test_gather_rows_matches_indexing():
    x = torch.randn(2, 5, 3)
    idx = torch.tensor([[4, 0], [2, 2]])
    out = gather_rows(x, idx)
    assert torch.equal(out[0], x[0, [4, 0]]) and torch.equal(out[1], x[1, [2, 2]])
