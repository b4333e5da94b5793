"""Tuning methods on the project's OFA model: reference parameter counts (ofa-base preset, built on the
meta device) and behaviour on a random nano model (native extend_with_prefix path, ResNet BatchNorm)."""

import pytest
import torch

from mmprompt.tuning import (
    AdapterConfig,
    BitFitConfig,
    PrefixConfig,
    ShallowPromptConfig,
    apply_method,
    count_parameters,
    remove_method,
)

modeling = pytest.importorskip("mmprompt.models.ofa.modeling")
ofa_config = pytest.importorskip("mmprompt.models.ofa.config")

ALL_SITES = ("encoder_self", "decoder_self", "decoder_cross")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ofa_base_meta():
    with torch.device("meta"):
        return modeling.OFAModel(ofa_config.OFAConfig.from_preset("ofa-base"))


@pytest.mark.parametrize(
    "config,expected",
    [
        (PrefixConfig(length=64), 1_179_648),  # P × (6 + 6) × 2 × 768
        (PrefixConfig(length=100), 1_843_200),
        (PrefixConfig(length=100, reparam=True), 30_845_952),  # "base ≈ 30.8M" with the 2d MLP
        (BitFitConfig(), 70_656),
        (AdapterConfig(dim=100), 1_853_616),
    ],
    ids=["prefix64", "prefix100", "prefix100-mlp", "bitfit", "adapter100"],
)
def test_ofa_base_trainable_counts_match_the_reference(ofa_base_meta, config, expected):
    apply_method(ofa_base_meta, config)
    try:
        assert count_parameters(ofa_base_meta)["trainable"] == expected
    finally:
        remove_method(ofa_base_meta)


@pytest.fixture()
def nano():
    model = modeling.OFAModel.from_preset("ofa-nano-small", seed=0).eval()
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        input_ids=torch.randint(4, 100, (2, 6), generator=g),
        patch_images=torch.randn(2, 3, 128, 128, generator=g),
        decoder_input_ids=torch.randint(4, 100, (2, 4), generator=g),
    )
    return model, inputs


def test_ofa_prefix_changes_outputs_keeps_cache_consistent_and_removes_exactly(nano):
    model, inputs = nano
    with torch.no_grad():
        before = model(**inputs).logits
    apply_method(model, PrefixConfig(length=3, sites=ALL_SITES, init_std=1.0, dropout=0.0))
    with torch.no_grad():
        during = model(**inputs).logits
        assert (during - before).abs().max() > 1e-2
        enc = model.encode(inputs["input_ids"], inputs["patch_images"])
        dec = inputs["decoder_input_ids"]
        first, past = model.decode(dec[:, :2], enc, None, use_cache=True)
        rest, _ = model.decode(dec[:, 2:], enc, past, use_cache=True)
    torch.testing.assert_close(torch.cat([first, rest], 1), during, atol=1e-5, rtol=1e-4)
    remove_method(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)


def test_ofa_prefix_training_step_freezes_resnet_batchnorm(nano):
    model, inputs = nano
    apply_method(model, PrefixConfig(length=3))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    stats = [bn.running_mean.clone() for bn in bns]
    model.train()
    model(**inputs).logits.float().pow(2).mean().backward()
    assert all(torch.equal(bn.running_mean, s) for bn, s in zip(bns, stats)) and not any(bn.training for bn in bns)
    for name, param in model.named_parameters():
        assert (param.grad is not None) == name.startswith("mmprompt_prefix."), name


def test_ofa_shallow_prompt_counts_and_runs(nano):
    model, inputs = nano
    apply_method(model, ShallowPromptConfig(length=2))
    assert count_parameters(model)["trainable"] == 2 * model.config.d_model
    with torch.no_grad():
        out = model(**inputs, attention_mask=torch.ones(2, 6, dtype=torch.long)).logits
    assert out.shape[:2] == (2, 4)


def test_ofa_shallow_prompt_padded_batch_equals_each_sample_alone(nano):
    """The padding of input_ids must survive the switch to inputs_embeds (no attention to pad tokens)."""
    model, inputs = nano
    apply_method(model, ShallowPromptConfig(length=3))
    model.eval()
    ids = inputs["input_ids"].clone()
    ids[1, -2:] = 1  # pad the second sample's last two tokens
    with torch.no_grad():
        batched = model(**dict(inputs, input_ids=ids)).logits
        alone = model(**{k: v[1:] for k, v in dict(inputs, input_ids=ids[:, :-2]).items()}).logits
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=1e-5)
    remove_method(model)
