"""Prefix tuning on whole models: generation, cache, beams, padding, checkpointing, freezing, depth, fold.

The backbone comes from the ``backbone`` fixture (tiny random BART with sdpa and eager attention);
adding the OFA model is a matter of adding a factory there.
"""

import dataclasses

import pytest
import torch

from mmprompt.tuning import (
    PrefixConfig,
    apply_prefix,
    count_parameters,
    fold,
    remove_method,
    remove_prefix,
)
from mmprompt.models.florence2 import enable_checkpointing
from mmprompt.core.injection import attach, provider_of
from mmprompt.tuning.prefix import plan_sites
from mmprompt.tuning.sites import discover_sites
from mmprompt.tuning.testing import ToyVisionBart, tiny_bart, tiny_bart_config

ALL_SITES = ("encoder_self", "decoder_self", "decoder_cross")
GEN = dict(do_sample=False, max_new_tokens=6, suppress_tokens=[2], eos_token_id=2, pad_token_id=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["sdpa", "eager"])
def backbone(request):
    """Factory for the backbone under test (keyword overrides go to the tiny config)."""
    return lambda **kw: tiny_bart(attn_implementation=request.param, **kw)


def strong(**kw) -> PrefixConfig:
    """A prefix large enough to change outputs visibly (init std 1), no dropout."""
    return PrefixConfig(**{"length": 4, "sites": ALL_SITES, "dropout": 0.0, "init_std": 1.0, **kw})


def batch(seed=0, b=2, t=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 48, (b, t), generator=g), torch.randint(3, 48, (b, 5), generator=g)


def test_apply_changes_outputs_and_remove_restores_exactly(backbone):
    model = backbone()
    x, y = batch()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    implementation = model.config._attn_implementation
    with torch.no_grad():
        before = model(input_ids=x, decoder_input_ids=y).logits
    bank = apply_prefix(model, strong())
    assert model.mmprompt_prefix is bank
    with torch.no_grad():
        during = model(input_ids=x, decoder_input_ids=y).logits
    assert (during - before).abs().max() > 1e-2
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("mmprompt_prefix."))
    remove_prefix(model)
    with torch.no_grad():
        after = model(input_ids=x, decoder_input_ids=y).logits
    assert torch.equal(before, after)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.config._attn_implementation == implementation
    assert not hasattr(model, "mmprompt_prefix")
    assert all(provider_of(m) is None for m in model.modules())


@pytest.mark.parametrize("sites", [("encoder_self",), ("decoder_self",), ("decoder_cross",), ALL_SITES])
def test_cached_greedy_generation_matches_uncached_forward(backbone, sites):
    model = backbone()
    apply_prefix(model, strong(sites=sites))
    x, _ = batch(1)
    out = model.generate(x, **GEN, use_cache=True, output_logits=True, return_dict_in_generate=True)
    steps = torch.stack(out.logits, dim=1)
    with torch.no_grad():
        full = model(input_ids=x, decoder_input_ids=out.sequences[:, :-1]).logits
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)
    uncached = model.generate(x, **GEN, use_cache=False)
    assert torch.equal(uncached, out.sequences)
    # the prefixes are not in the cache: the self-attention cache holds exactly the generated positions
    with torch.no_grad():
        step = model(input_ids=x, decoder_input_ids=out.sequences[:, :3], use_cache=True)
    assert step.past_key_values.self_attention_cache.get_seq_length() == 3


@pytest.mark.parametrize("num_beams,num_return", [(1, 1), (5, 1), (5, 3)])
def test_beam_search_scores_match_full_forward(backbone, num_beams, num_return):
    model = backbone()
    apply_prefix(model, strong())
    x, _ = batch(2)
    kw = dict(GEN, num_beams=num_beams, num_return_sequences=num_return, length_penalty=0.0)
    out = model.generate(x, **kw, output_scores=True, return_dict_in_generate=True)
    assert out.sequences.shape[0] == x.shape[0] * num_return
    assert torch.equal(model.generate(x, **kw, use_cache=False), out.sequences)
    if num_beams == 1:
        return
    sources = x.repeat_interleave(num_return, dim=0)
    with torch.no_grad():
        logp = model(input_ids=sources, decoder_input_ids=out.sequences[:, :-1]).logits.log_softmax(-1)
    targets = out.sequences[:, 1:]
    recomputed = logp.gather(-1, targets[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores, recomputed, atol=1e-4, rtol=1e-4)


def test_padded_batch_matches_per_sample(backbone):
    model = backbone()
    apply_prefix(model, strong())
    long, _ = batch(3, b=1, t=8)
    short, _ = batch(4, b=1, t=5)
    padded = torch.cat([long, torch.cat([short, torch.ones(1, 3, dtype=torch.long)], 1)])
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    y = batch(5, b=2)[1]
    with torch.no_grad():
        joint = model(input_ids=padded, attention_mask=mask, decoder_input_ids=y).logits
        one = model(input_ids=long, decoder_input_ids=y[:1]).logits
        two = model(input_ids=short, decoder_input_ids=y[1:]).logits
    torch.testing.assert_close(joint[0], one[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(joint[1], two[0], atol=1e-5, rtol=1e-4)
    gen = model.generate(padded, attention_mask=mask, **GEN)
    assert torch.equal(gen[0], model.generate(long, **GEN)[0])
    assert torch.equal(gen[1], model.generate(short, **GEN)[0])


def _prefix_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    model(input_ids=x, labels=y).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("hidden", [None, 24])
def test_gradient_checkpointing_gives_same_gradients(backbone, hidden):
    model = backbone()
    apply_prefix(model, strong(reparam=hidden is not None, reparam_hidden=hidden, init_std=0.5))
    model.train()
    x, y = batch(6)
    plain = _prefix_grads(model, x, y)
    enable_checkpointing(model)
    assert model.model.encoder.layers[0].gradient_checkpointing
    checkpointed = _prefix_grads(model, x, y)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        assert plain[name].abs().max() > 0, name
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_reentrant_checkpointing_is_refused_clearly():
    model = tiny_bart()
    apply_prefix(model, strong())
    model.train()
    enable_checkpointing(model, use_reentrant=True)
    x, y = batch(6)
    with pytest.raises(ValueError, match="non-reentrant"):
        model(input_ids=x, labels=y)


def test_gradients_reach_exactly_the_trainable_parameters(backbone):
    model = backbone()
    apply_prefix(model, strong(reparam=True))
    model.train()
    x, y = batch(7)
    model(input_ids=x, labels=y).loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("mmprompt_prefix."):
            assert param.requires_grad and param.grad is not None and param.grad.abs().max() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


def test_batchnorm_statistics_stay_frozen_in_train_mode():
    torch.manual_seed(0)
    model = ToyVisionBart()
    bn = model.vision_stem[1]
    pixels, ids = torch.randn(2, 3, 9, 9), torch.randint(3, 48, (2, 4))
    apply_prefix(model, strong())
    stats = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    model.train()
    assert model.bart.training and not bn.training
    model(pixels, ids, labels=ids).loss.backward()
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    remove_method(model)
    model.train()
    assert bn.training
    model(pixels, ids, labels=ids)
    assert not torch.equal(bn.running_mean, stats[0])


def _record_prefixed_calls(model):
    """Wrap every provider so a forward reports which attention modules received prefix columns."""
    calls = set()
    for name, module in model.named_modules():
        provider = provider_of(module)
        if provider is not None:
            def wrapped(batch_size, _p=provider, _n=name):
                calls.add(_n)
                return _p(batch_size)
            attach(module, wrapped)
    return calls


@pytest.mark.parametrize(
    "choice,expected_enc,expected_dec",
    [
        ({}, [0, 1, 2], [0, 1, 2]),
        ({"depth": 1}, [0], [0]),
        ({"depth": 2, "depth_from": "top"}, [1, 2], [1, 2]),
        ({"layers": {"encoder": [0, 2], "decoder": [0, 2]}}, [0, 2], [0, 2]),
        ({"layers": {"encoder": [1], "decoder": [0, 2]}}, [1], [0, 2]),
    ],
)
def test_depth_selection_hits_exactly_the_intended_layers(choice, expected_enc, expected_dec):
    model = tiny_bart(layers=3)
    bank = apply_prefix(model, strong(**choice))
    calls = _record_prefixed_calls(model)
    x, y = batch(8)
    with torch.no_grad():
        model(input_ids=x, decoder_input_ids=y)
    expected = {f"model.encoder.layers.{i}.self_attn" for i in expected_enc}
    expected |= {f"model.decoder.layers.{i}.self_attn" for i in expected_dec}
    expected |= {f"model.decoder.layers.{i}.encoder_attn" for i in expected_dec}
    assert calls == expected
    kv = 16
    assert count_parameters(model)["trainable"] == 4 * 2 * kv * (len(expected_enc) + 2 * len(expected_dec))
    assert bank.layers() == {"encoder_self": expected_enc, "decoder_self": expected_dec, "decoder_cross": expected_dec}


def test_depth_beyond_the_stack_is_a_clear_error():
    model = tiny_bart(layers=6)
    with pytest.raises(ValueError, match=r"depth=7 exceeds the encoder stack's 6 layers"):
        apply_prefix(model, PrefixConfig(depth=7))
    with pytest.raises(ValueError, match="list layer 6, but it has 6 layers"):
        apply_prefix(model, PrefixConfig(layers={"encoder": [0, 6], "decoder": [0]}))
    with pytest.raises(ValueError, match="no entry for the decoder stack"):
        apply_prefix(model, PrefixConfig(layers={"encoder": [0]}))
    assert not hasattr(model, "mmprompt_prefix")  # nothing was changed
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"length": 0}, "length"),
        ({"sites": ("encoder_self", "cross")}, "sites"),
        ({"sites": ()}, "sites"),
        ({"depth": 0}, "depth"),
        ({"depth": [1, 1]}, "depth"),
        ({"depth": {"middle": [0]}}, "depth"),
        ({"depth_from": "left"}, "depth_from"),
        ({"reparam": 16}, "reparam_hidden"),
        ({"reparam": True, "reparam_hidden": 0}, "reparam_hidden"),
        ({"reparam_hidden": 8}, "needs reparam=True"),
        ({"depth": [0, 1]}, "layers="),
        ({"depth": 2, "layers": {"encoder": [0]}}, "give one of them"),
        ({"dropout": 1.0}, "dropout"),
        ({"init": "zeros"}, "init"),
        ({"init_token_ids": (1, 2)}, "init_token_ids"),
    ],
)
def test_bad_prefix_configs_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PrefixConfig(**kwargs)


def test_fold_gives_identical_outputs_and_flat_parameter_count():
    model = tiny_bart()
    bank = apply_prefix(model, strong(reparam=True, reparam_hidden=32, init_std=0.3))
    x, y = batch(9)
    L, P, kv, d, h = 2, 4, 16, 16, 32
    width = L * 2 * kv
    per_site = P * d + d * h + h + h * width + width
    assert count_parameters(model)["trainable"] == 3 * per_site
    with torch.no_grad():
        before = model(input_ids=x, decoder_input_ids=y).logits
    fold(bank)
    assert bank.config.reparam is False
    with torch.no_grad():
        after = model(input_ids=x, decoder_input_ids=y).logits
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    assert count_parameters(model)["trainable"] == 3 * P * width
    assert all(p.requires_grad for p in bank.parameters())


def test_table_computed_once_per_stack_forward_and_reused_in_eval_generation():
    model = tiny_bart(layers=3)
    bank = apply_prefix(model, strong())
    counts = []
    original = bank.compute_table
    bank.compute_table = lambda kind: counts.append(kind) or original(kind)
    x, y = batch(10)
    model.train()
    model(input_ids=x, labels=y).loss.backward()
    assert sorted(counts) == sorted(ALL_SITES)  # once per site, not once per layer
    counts.clear()
    model.eval()
    model.generate(x, **GEN)
    assert sorted(counts) == sorted(ALL_SITES)  # no grad, no dropout: one table for all steps


def test_prefix_dropout_only_in_training():
    model = tiny_bart()
    apply_prefix(model, strong(dropout=0.5))
    x, y = batch(11)
    model.train()
    with torch.no_grad():
        a, b = (model(input_ids=x, decoder_input_ids=y).logits for _ in range(2))
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        c, d = (model(input_ids=x, decoder_input_ids=y).logits for _ in range(2))
    assert torch.equal(c, d)


def test_vocab_init_projects_token_embeddings_through_each_layer():
    model = tiny_bart()
    ids = (5, 9, 11, 20)
    bank = apply_prefix(model, PrefixConfig(length=4, sites=("encoder_self",), init="vocab", init_token_ids=ids))
    emb = model.get_input_embeddings()
    with torch.no_grad():
        states = torch.nn.functional.layer_norm(emb(torch.tensor(ids)), (16,))
        for slot, layer in enumerate(model.model.encoder.layers):
            key, value = bank.kv_table("encoder_self")[slot]
            expect_k = layer.self_attn.k_proj(states).view(4, 2, 8).transpose(0, 1)
            expect_v = layer.self_attn.v_proj(states).view(4, 2, 8).transpose(0, 1)
            torch.testing.assert_close(key, expect_k)
            torch.testing.assert_close(value, expect_v)


def test_same_seed_same_init_and_different_seed_differs():
    tables = []
    for seed in (3, 3, 4):
        model = tiny_bart()
        tables.append(apply_prefix(model, PrefixConfig(length=4, seed=seed)).tables())
    assert all(torch.equal(tables[0][k], tables[1][k]) for k in tables[0])
    assert not torch.equal(tables[0]["encoder_self"], tables[2]["encoder_self"])


def test_switching_attention_implementation_under_prefixes_is_caught():
    model = tiny_bart()
    apply_prefix(model, strong())
    model.set_attn_implementation("eager")
    x, y = batch(13)
    with pytest.raises(ValueError, match="changed to 'eager'"):
        model(input_ids=x, decoder_input_ids=y)


def test_second_method_is_refused():
    model = tiny_bart()
    apply_prefix(model, PrefixConfig(length=2))
    with pytest.raises(ValueError, match="already has method 'prefix'"):
        apply_prefix(model, PrefixConfig(length=2))


def test_ofa_base_prefix_count_is_1179648():
    """ofa-base dims (d_model 768, 12 heads, 6+6 layers), length 64 on both stacks (built on meta)."""
    config = tiny_bart_config(d_model=768, layers=6, heads=12, vocab=8, encoder_ffn_dim=8, decoder_ffn_dim=8)
    with torch.device("meta"):
        from transformers import BartForConditionalGeneration

        model = BartForConditionalGeneration(config)
    apply_prefix(model, PrefixConfig(length=64))
    counts = count_parameters(model)
    assert counts["trainable"] == 1_179_648
    assert counts["groups"]["prefix:encoder_self"]["trainable"] == 589_824
    plans = plan_sites(discover_sites(model), dataclasses.replace(PrefixConfig(length=100)))
    assert sum(100 * p.width for p in plans.values()) == 1_843_200  # the reference table's P=100 column


def test_half_precision_backbone_and_dtype_change_after_apply():
    model = tiny_bart().to(torch.bfloat16)
    bank = apply_prefix(model, strong())
    assert all(p.dtype == torch.bfloat16 for p in bank.parameters())
    x, _ = batch(12)
    assert model.generate(x, **GEN).shape == (2, 7)
    model.to(torch.float32)  # the cached tables must follow the new dtype
    with torch.no_grad():
        out = model(input_ids=x, decoder_input_ids=x[:, :3]).logits
    assert out.dtype == torch.float32 and bank.kv_table("encoder_self").dtype == torch.float32
