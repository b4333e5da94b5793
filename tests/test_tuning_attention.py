"""Attention-module level checks of prefix injection through transformers' BART attention."""

import pytest
import torch

from mmprompt.tuning import hf
from mmprompt.core.injection import attach, detach
from mmprompt.tuning.testing import tiny_bart

P, B, T = 3, 2, 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _heads(x, attn):
    return x.view(x.shape[0], x.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)


def _prefix_from_tokens(attn, h_prefix):
    """Keys/values a layer computes for real prefix tokens (no position bias in BART attention)."""
    return _heads(attn.k_proj(h_prefix), attn), _heads(attn.v_proj(h_prefix), attn)


def _padding_mask(lengths, total, prefix_open, implementation, q_len):
    """4-D mask as transformers builds it: bool (sdpa) or additive float (eager)."""
    keys = torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]
    keys = torch.cat([torch.ones(len(lengths), prefix_open, dtype=torch.bool), keys], dim=1)
    mask = keys[:, None, None, :].expand(-1, 1, q_len, -1)
    if implementation == "sdpa":
        return mask
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True])
def test_prefix_equals_prepending_real_tokens_encoder_self(implementation, padded):
    model = tiny_bart(attn_implementation=implementation)
    attn = model.model.encoder.layers[0].self_attn
    torch.manual_seed(1)
    h_prefix, h = torch.randn(1, P, 16), torch.randn(B, T, 16)
    lengths = [T, T - 2] if padded else [T, T]

    full_mask = _padding_mask(lengths, T, P, implementation, P + T) if padded else None
    with torch.no_grad():
        reference = attn(torch.cat([h_prefix.expand(B, -1, -1), h], dim=1), attention_mask=full_mask)[0][:, P:]
        pk, pv = _prefix_from_tokens(attn, h_prefix)

    attach(attn, lambda batch: (pk, pv))
    restore = hf.enable([attn])
    try:
        mask = _padding_mask(lengths, T, 0, implementation, T) if padded else None
        with torch.no_grad():
            out = attn(h, attention_mask=mask)[0]
    finally:
        hf.disable(restore)
        detach(attn)
    assert model.config._attn_implementation == implementation
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=1e-5)
    # and the prefix really matters: without it the output differs
    with torch.no_grad():
        plain = attn(h, attention_mask=_padding_mask(lengths, T, 0, implementation, T) if padded else None)[0]
    assert (plain - reference).abs().max() > 1e-3


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_causal_decoder_self_attention_sees_every_prefix_column(implementation):
    """No mask + several queries (sdpa's is_causal path) must still be causal over the real keys."""
    model = tiny_bart(attn_implementation=implementation)
    attn = model.model.decoder.layers[0].self_attn
    assert attn.is_causal
    torch.manual_seed(2)
    h_prefix, h = torch.randn(1, P, 16), torch.randn(B, T, 16)
    n = P + T
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    causal[:, :P] = True  # every query sees every prefix token
    full_mask = causal[None, None].expand(B, 1, n, n)
    if implementation == "eager":
        full_mask = torch.zeros(full_mask.shape).masked_fill(~full_mask, torch.finfo(torch.float32).min)
    with torch.no_grad():
        reference = attn(torch.cat([h_prefix.expand(B, -1, -1), h], dim=1), attention_mask=full_mask)[0][:, P:]
        pk, pv = _prefix_from_tokens(attn, h_prefix)
    attach(attn, lambda batch: (pk, pv))
    restore = hf.enable([attn])
    try:
        with torch.no_grad():
            out = attn(h, attention_mask=None)[0]
    finally:
        hf.disable(restore)
        detach(attn)
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=1e-5)


def test_module_without_provider_is_unchanged_under_prefix_backend():
    model = tiny_bart()
    attn = model.model.encoder.layers[1].self_attn
    h = torch.randn(B, T, 16)
    with torch.no_grad():
        before = attn(h)[0]
        restore = hf.enable([attn])
        during = attn(h)[0]
        hf.disable(restore)
    assert torch.equal(before, during)


def test_enable_refuses_unsupported_backends_and_double_enable():
    model = tiny_bart()
    attn = model.model.encoder.layers[0].self_attn
    model.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(ValueError, match="flash_attention_2"):
        hf.enable([attn])
    model.config._attn_implementation_internal = "sdpa"
    restore = hf.enable([attn])
    with pytest.raises(ValueError, match="already enabled"):
        hf.enable([attn])
    hf.disable(restore)
    assert model.config._attn_implementation == "sdpa"
