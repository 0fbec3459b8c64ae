"""HSM-SSD in other networks: the drop-in block, insertion into torchvision and timm CNNs, the CSP blocks."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
import torchvision

import efficientvim as ev
from efficientvim.plug import default_state_dim


def test_block_takes_maps_or_tokens_and_starts_as_the_identity():
    torch.manual_seed(0)
    block = ev.HSMSSDBlock(48, num_heads=2, mixer_depth=1)
    x = torch.randn(2, 48, 9, 13)
    assert torch.equal(block(x), x)  # gates at zero: inserting it changes nothing yet
    with torch.no_grad():
        block.gate_mixer.fill_(0.5)
        block.gate_ffn.fill_(0.5)
    y = block(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    tokens = block(x.flatten(2).transpose(1, 2), (9, 13))
    torch.testing.assert_close(tokens.transpose(1, 2).reshape_as(x), y)
    # without an FFN: the mixer branch alone, as written out
    plain = ev.HSMSSDBlock(48, state_dim=7, mlp_ratio=0)
    with torch.no_grad():
        plain.gate_mixer.fill_(0.3)
    t = x.flatten(2).transpose(1, 2)
    expected = t + 0.3 * plain.mixer(plain.norm(t), (9, 13))[0]
    torch.testing.assert_close(plain(t, (9, 13)), expected)
    with pytest.raises(ValueError, match=r"HSMSSDBlock\(48\) takes \(B, 48, H, W\) maps"):
        block(torch.randn(2, 32, 9, 13))
    assert default_state_dim(128) == 49 and default_state_dim(512) == 12 and default_state_dim(4096) == 4


def test_inserted_into_a_torchvision_resnet_it_keeps_the_output_and_trains():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        before = net(x)
    ev.insert_hsmssd(net, ["layer2", "layer3.1"], input_size=(96, 128))
    assert isinstance(net.layer2[-1], ev.HSMSSDBlock) and net.layer2[-1].dim == 128
    assert isinstance(net.layer3[1][-1], ev.HSMSSDBlock) and net.layer3[1][-1].dim == 256
    with torch.no_grad():
        torch.testing.assert_close(net(x), before)  # zero gates: the trained network is unchanged
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = F.cross_entropy(net(x), torch.tensor([1, 2]))
    loss.backward()
    block = net.layer2[-1]
    assert block.gate_mixer.grad.abs().sum() > 0 and block.gate_ffn.grad.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
    F.cross_entropy(net(x), torch.tensor([1, 2])).backward()  # second step: the gates now let gradients in
    assert block.mixer.BCdt_proj.conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no module named 'layer9' in ResNet"):
        ev.insert_hsmssd(net, ["layer9"])
    with pytest.raises(ValueError, match=r"fc returns \(1, 10\), not one \(B, C, H, W\) map"):
        ev.insert_hsmssd(torchvision.models.resnet18(num_classes=10), ["fc"])


def test_inserted_into_a_timm_cnn():
    import timm

    net = timm.create_model("mobilenetv3_small_050", num_classes=5).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        before = net(x)
        ev.insert_hsmssd(net, ["blocks.3"], input_size=(128, 128), state_dim=8)
        torch.testing.assert_close(net(x), before)
    assert net.blocks[3][-1].mixer.state_dim == 8


def test_csp_blocks_are_constructed_as_c2f_and_c3k2():
    c2f = inspect.signature(ev.C2fHSMSSD).parameters
    assert list(c2f)[:6] == ["c1", "c2", "n", "shortcut", "g", "e"]
    assert [c2f[k].default for k in ("n", "shortcut", "g", "e")] == [1, False, 1, 0.5]
    c3k2 = inspect.signature(ev.C3k2HSMSSD).parameters
    assert list(c3k2)[:7] == ["c1", "c2", "n", "c3k", "e", "g", "shortcut"]
    assert [c3k2[k].default for k in ("n", "c3k", "e", "g", "shortcut")] == [1, False, 0.5, 1, True]
    x = torch.randn(2, 64, 20, 28)
    for block, blocks in ((ev.C2fHSMSSD(64, 96, 2), 2), (ev.C3k2HSMSSD(64, 96, 2, True), 4)):
        block.eval()
        assert sum(isinstance(m, ev.HSMSSDBlock) for m in block.modules()) == blocks
        assert block.cv2.conv.in_channels == (2 + 2) * 48
        # C2f's data flow, written out: with the blocks' gates at zero each stage passes its input on, so the
        # fused 1x1 sees [a, b, b, b] for the two halves a, b of cv1's output
        with torch.no_grad():
            a, b = block.cv1(x).chunk(2, 1)
            torch.testing.assert_close(block(x), block.cv2(torch.cat([a, b, b, b], 1)))
            for m in block.modules():
                if isinstance(m, ev.HSMSSDBlock):
                    m.gate_mixer.fill_(0.5)
            y = block(x)
        assert y.shape == (2, 96, 20, 28) and not torch.allclose(y, block.cv2(torch.cat([a, b, b, b], 1)))

