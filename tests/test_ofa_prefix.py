"""OFA attention calls extend_with_prefix: prefixes change outputs, never enter the cache."""

import pytest
import torch

from mmprompt.models.ofa.testing import make_batch, tiny_model
from mmprompt.core.injection import attach, detach


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=80, seed=0)


def _provider(model, n_prefix=3, seed=0):
    heads = model.config.encoder_attention_heads
    head_dim = model.config.d_model // heads
    gen = torch.Generator().manual_seed(seed)
    pk = torch.randn(1, heads, n_prefix, head_dim, generator=gen)
    pv = torch.randn(1, heads, n_prefix, head_dim, generator=gen)
    calls = []

    def provide(batch_size):
        calls.append(batch_size)
        return pk, pv

    provide.calls = calls
    return provide


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_encoder_prefix_changes_outputs_and_detach_restores(model):
    batch = make_batch(model.config, (6, 4), image_size=64)
    before = _logits(model, batch)
    site = model.get_submodule("encoder.layers.1.self_attn")
    provider = _provider(model)
    attach(site, provider)
    try:
        with_prefix = _logits(model, batch)
    finally:
        detach(site)
    after = _logits(model, batch)
    assert provider.calls == [2]
    assert (before - with_prefix).abs().max() > 1e-3
    assert torch.equal(before, after)


def test_encoder_prefix_keeps_padded_batch_consistent(model):
    batch = make_batch(model.config, (7, 4), (4, 2), image_size=64, seed=1)
    site = model.get_submodule("encoder.layers.0.self_attn")
    attach(site, _provider(model, 5))
    try:
        together = _logits(model, batch)
        alone = _logits(model, {"input_ids": batch["input_ids"][1:, :4], "patch_images": batch["patch_images"][1:],
                                "decoder_input_ids": batch["decoder_input_ids"][1:, :2]})
    finally:
        detach(site)
    assert (together[1, :2] - alone[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("site_name", ["decoder.layers.2.self_attn", "decoder.layers.0.cross_attn"])
def test_incremental_decoding_with_prefix_equals_full_forward(model, site_name):
    batch = make_batch(model.config, (6, 5), (5, 3), image_size=64, seed=2)
    site = model.get_submodule(site_name)
    attach(site, _provider(model, 4, seed=7))
    try:
        with torch.no_grad():
            enc = model.encode(input_ids=batch["input_ids"], patch_images=batch["patch_images"])
            full, _ = model.decode(batch["decoder_input_ids"], enc, use_cache=False)
            past, steps = None, []
            for t in range(batch["decoder_input_ids"].shape[1]):
                logits, past = model.decode(batch["decoder_input_ids"][:, t:t + 1], enc, past)
                steps.append(logits)
    finally:
        detach(site)
    with torch.no_grad():
        plain, _ = model.decode(batch["decoder_input_ids"], enc, use_cache=False)
    assert (full - torch.cat(steps, 1)).abs().max().item() <= 1e-5
    assert (full - plain).abs().max().item() > 1e-3
    # the cache holds only real positions, never prefix columns
    self_k, _, cross_k, _ = past.layers[0]
    assert self_k.shape[2] == 5 and cross_k.shape[2] == enc.last_hidden_state.shape[1]
