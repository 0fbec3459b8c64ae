"""HSM-SSD as a stand-alone layer: layouts, shapes, and the paper's equations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from efficientvim import HSMSSD


def reference_equations(layer: HSMSSD, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The HSM-SSD equations written out independently with einsum on a (B, D, H, W) map."""
    batch, dim, height, width = x.shape
    n = layer.state_dim
    w_bcdt = layer.BCdt_proj.conv.weight[..., 0]  # (3N, D)
    bcdt = F.conv2d(torch.einsum("od,bdhw->bohw", w_bcdt, x), layer.dw.conv.weight, padding=1, groups=3 * n)
    b, c, dt = bcdt.flatten(2).split(n, dim=1)
    a = torch.softmax(dt + layer.A[None, :, None], dim=-1)
    h = torch.einsum("bdl,bnl->bdn", x.flatten(2), a * b)
    hz = torch.einsum("od,bdn->bon", layer.hz_proj.conv.weight[..., 0], h)
    h1, z = hz.split(layer.d_inner, dim=1)
    h = torch.einsum("od,bdn->bon", layer.out_proj.conv.weight[..., 0], h1 * F.silu(z) + layer.D * h1)
    y = torch.einsum("bdn,bnl->bdl", h, c)
    return y.reshape(batch, dim, height, width), h


@pytest.mark.parametrize("size", [(7, 7), (13, 29), (1, 5)])
def test_map_input_follows_the_equations_at_any_size(size):
    torch.manual_seed(0)
    layer = HSMSSD(dim=24, state_dim=9)
    x = torch.randn(2, 24, *size)
    y, h = layer(x)
    y_ref, h_ref = reference_equations(layer, x)
    assert y.shape == (2, 24, *size) and h.shape == (2, 24, 9)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)


def test_token_input_equals_map_input():
    torch.manual_seed(0)
    layer = HSMSSD(dim=16, state_dim=5)
    x = torch.randn(3, 16, 6, 11)
    y_map, h_map = layer(x)
    tokens = x.flatten(2).transpose(1, 2)  # (B, L, C), row-major
    y_tok, h_tok = layer(tokens, size=(6, 11))
    assert y_tok.shape == (3, 66, 16)
    torch.testing.assert_close(y_tok, y_map.flatten(2).transpose(1, 2))
    torch.testing.assert_close(h_tok, h_map)


def test_ssd_expand_widens_the_state_mixer_only():
    layer = HSMSSD(dim=16, state_dim=4, ssd_expand=2)
    assert layer.hz_proj.conv.weight.shape == (64, 16, 1)
    assert layer.out_proj.conv.weight.shape == (16, 32, 1)
    x = torch.randn(1, 16, 5, 5)
    y, h = layer(x)
    y_ref, h_ref = reference_equations(layer, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    assert h.shape == (1, 16, 4)


def test_state_weights_are_distributions_over_tokens():
    layer = HSMSSD(dim=8, state_dim=3)
    a = layer.state_weights(torch.randn(2, 8, 5, 9))
    assert a.shape == (2, 3, 5, 9)
    torch.testing.assert_close(a.sum(dim=(-2, -1)), torch.ones(2, 3))


def test_tokens_that_do_not_match_the_size_are_rejected():
    layer = HSMSSD(dim=8, state_dim=3)
    with pytest.raises(ValueError, match="do not match size 4x4"):
        layer(torch.randn(1, 15, 8), size=(4, 4))
    with pytest.raises(ValueError, match="expects a \\(B, C, H, W\\) map"):
        layer(torch.randn(1, 15, 8))
