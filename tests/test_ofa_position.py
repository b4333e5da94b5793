"""Position machinery against hand-computed values of OFA's published formulas."""

import math

import pytest
import torch
import torch.nn as nn

from mmprompt.models.ofa import OFAConfig, OFAModel
from mmprompt.models.ofa.position import (
    absolute_position_bias,
    image_bucket_positions,
    image_position_ids,
    num_image_buckets,
    num_token_buckets,
    patch_grid_size,
    token_bucket_positions,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_token_buckets_small_table_by_hand():
    # bucket 8, max 16: mid 4; |d| <= 4 keeps d; else sign·(4 + ceil(ln(|d|/4)/ln(15/4)·3)); then +7.
    t = token_bucket_positions(8, 16)
    assert t.shape == (16, 16)
    by_hand = {(10, 0): 14, (10, 2): 13, (10, 4): 12, (10, 5): 12, (10, 6): 11, (10, 10): 7, (10, 14): 3,
               (0, 8): 1, (0, 4): 3, (4, 0): 11, (15, 0): 14, (0, 15): 0}
    for (q, k), want in by_hand.items():
        assert t[q, k].item() == want, (q, k)


def test_token_buckets_ofa_size_by_hand():
    t = token_bucket_positions(256, 1024)
    # d = 200: ceil(ln(200/128)/ln(1023/128)·127) = ceil(27.27) = 28 → 128 + 28 + 255 = 411
    assert t[200, 0].item() == 411 and t[0, 200].item() == 255 - 156
    assert t[1000, 0].item() == 509  # ceil(125.61) = 126 → 254 + 255
    assert t[128, 0].item() == 383 and t[129, 0].item() == 384  # 128 is the last exact distance
    assert t[5, 5].item() == 255
    assert t.min().item() == 0 and t.max().item() == num_token_buckets(256) - 1 == 510


def test_image_buckets_by_hand():
    t = image_bucket_positions(2)  # positions 1..4 = cells (0,0), (0,1), (1,0), (1,1); n = 3² + 3 = 12
    assert num_image_buckets(2) == 12 and t.shape == (5, 5)
    assert t[0, 0].item() == 11 and t[0, 3].item() == 9 and t[2, 0].item() == 10
    assert t[1, 4].item() == 0  # Δ = (−1, −1) → (0)·3 + 0
    assert t[4, 1].item() == 8  # Δ = (1, 1) → 2·3 + 2
    assert t[2, 3].item() == 2  # Δ = (−1, +1)
    assert t[3, 2].item() == 6  # Δ = (+1, −1)
    assert all(t[i, i].item() == 4 for i in range(1, 5))
    big = image_bucket_positions(42)
    assert big.shape == (1765, 1765) and big.max().item() == 6891


def test_image_position_ids_row_major():
    assert image_position_ids(2, 3, 42).tolist() == [1, 2, 3, 43, 44, 45]


def test_absolute_position_bias_by_hand():
    q_lin, k_lin = nn.Linear(4, 4), nn.Linear(4, 4)
    with torch.no_grad():
        q_lin.weight.copy_(2 * torch.eye(4))
        q_lin.bias.zero_()
        k_lin.weight.copy_(torch.eye(4))
        k_lin.bias.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    pos = torch.tensor([[[1.0, 0, 0, 1], [0, 1, 1, 0]]])
    bias = absolute_position_bias(pos, pos, q_lin, k_lin, num_heads=2, scaling=(2 * 2) ** -0.5)
    want = torch.tensor([[[1.0, 0.0], [1.0, 2.0]], [[1.0, 0.0], [0.0, 1.0]]])
    assert torch.allclose(bias[0], want)


@pytest.mark.parametrize("pixels", [32, 64, 100, 128])
def test_patch_grid_size_matches_resnet(pixels):
    model = OFAModel(OFAConfig.from_preset("ofa-nano-small", vocab_size=40)).eval()
    with torch.no_grad():
        feats = model.encoder.embed_images(torch.zeros(1, 3, pixels, pixels))
    assert feats.shape[-1] == feats.shape[-2] == patch_grid_size(pixels)
    assert feats.shape[1] == model.config.resnet_out_channels


def test_encoder_layer_bias_assembled_as_published():
    """Layer 0's attention bias equals abs bias (LN'd positions) + text/image rel bias + padding, by hand."""
    torch.manual_seed(0)
    model = OFAModel(OFAConfig.from_preset("ofa-nano-small", vocab_size=40), seed=1).eval()
    enc = model.encoder
    ids = torch.tensor([[0, 5, 2], [0, 2, 1]])  # second sample padded at the end
    images = torch.rand(2, 3, 32, 32) * 2 - 1  # 2×2 patch grid
    seen = {}

    def grab(module, args):
        seen["bias"] = args[1]

    enc.layers[0].self_attn.register_forward_pre_hook(grab)
    with torch.no_grad():
        model.encode(input_ids=ids, patch_images=images)
        heads, b = enc.num_heads, model.config.image_bucket_size  # 16
        img_ids = torch.tensor([1, 2, b + 1, b + 2])
        pos = torch.cat([enc.image_pos_ln(enc.embed_image_positions.weight[img_ids]),
                         enc.pos_ln(enc.embed_positions.weight[:3])])
        q = (pos @ enc.pos_q_linear.weight.T + enc.pos_q_linear.bias).view(7, heads, -1).transpose(0, 1)
        k = (pos @ enc.pos_k_linear.weight.T + enc.pos_k_linear.bias).view(7, heads, -1).transpose(0, 1)
        scale = (model.config.d_model / heads * 2) ** -0.5
        want = (q @ k.transpose(1, 2)) * scale  # [H, 7, 7]
        tok = enc.token_rel_pos_table_list[0].weight
        img = enc.image_rel_pos_table_list[0].weight
        cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
        for i in range(4):
            for j in range(4):
                dr, dc = cells[i][0] - cells[j][0], cells[i][1] - cells[j][1]
                want[:, i, j] += img[(dr + b - 1) * (2 * b - 1) + dc + b - 1]
        for i in range(3):
            for j in range(3):  # |d| <= 32: bucket d + 63
                want[:, 4 + i, 4 + j] += tok[i - j + model.config.token_bucket_size - 1]
    got = seen["bias"]
    assert got.shape == (2, heads, 7, 7)
    assert torch.allclose(got[0], want, atol=1e-5)
    assert torch.allclose(got[1, :, :, :6], want[:, :, :6], atol=1e-5)
    assert (got[1, :, :, 6] == torch.finfo(torch.float32).min).all()
    assert not math.isinf(got.min().item())
