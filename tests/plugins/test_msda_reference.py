"""The MSDA reference against a naive per-sampling-point bilinear loop."""

from __future__ import annotations

import math

import pytest
import torch

from plugins.msda import ms_deform_attn, ms_deform_attn_reference


def naive_msda(value, shapes, locations, weights):
    """Loop over every (batch, query, head, level, point): bilinear sample with zero padding, weight, sum."""
    N, _S, M, D = value.shape
    _, Lq, _, _L, P, _ = locations.shape
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(N, Lq, M, D, dtype=torch.float64)
    v64 = value.double()
    for n in range(N):
        for q in range(Lq):
            for m in range(M):
                for lvl, (h, w) in enumerate(shapes):
                    grid = v64[n, starts[lvl] : starts[lvl] + h * w, m].view(h, w, D)
                    for p in range(P):
                        x = locations[n, q, m, lvl, p, 0].item() * w - 0.5
                        y = locations[n, q, m, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(D, dtype=torch.float64)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                sample += (1 - abs(x - xx)) * (1 - abs(y - yy)) * grid[yy, xx]
                        out[n, q, m] += weights[n, q, m, lvl, p].item() * sample
    return out.view(N, Lq, M * D)


@pytest.mark.parametrize(
    ("shapes", "N", "Lq", "M", "D", "P"),
    [
        ([(6, 8), (3, 4), (2, 2)], 2, 5, 2, 4, 3),
        ([(5, 7)], 1, 4, 1, 3, 4),
        ([(4, 4), (2, 3)], 1, 6, 3, 2, 2),
    ],
)
def test_reference_matches_naive_loop(shapes, N, Lq, M, D, P):
    L = len(shapes)
    S = sum(h * w for h, w in shapes)
    value = torch.randn(N, S, M, D)
    # include locations outside [0, 1] so zero padding is exercised
    locations = torch.rand(N, Lq, M, L, P, 2) * 1.4 - 0.2
    weights = torch.rand(N, Lq, M, L, P).softmax(-1)
    spatial = torch.tensor(shapes, dtype=torch.int64)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    got = ms_deform_attn_reference(value, spatial, start, locations, weights)
    assert got.shape == (N, Lq, M * D)
    want = naive_msda(value, shapes, locations, weights)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    # the dispatch point gives the same on CPU; shapes may also be plain pairs
    torch.testing.assert_close(ms_deform_attn(value, shapes, None, locations, weights), got)


def test_reference_rejects_inconsistent_shapes():
    value = torch.randn(1, 10, 1, 2)
    with pytest.raises(ValueError, match="cover"):
        ms_deform_attn_reference(value, [(3, 3)], None, torch.rand(1, 2, 1, 1, 1, 2), torch.rand(1, 2, 1, 1, 1))
    with pytest.raises(ValueError, match="levels"):
        ms_deform_attn_reference(value, [(2, 5)], None, torch.rand(1, 2, 1, 2, 1, 2), torch.rand(1, 2, 1, 2, 1))
