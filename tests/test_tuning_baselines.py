"""Baselines (finetune, BitFit, adapter, LoRA) and shallow prompt tuning through ``apply_method``."""

import pytest
import torch

from mmprompt.tuning import (
    AdapterConfig,
    BitFitConfig,
    FinetuneConfig,
    LoRAConfig,
    PrefixConfig,
    ShallowPromptConfig,
    apply_method,
    count_parameters,
    method_name,
    remove_method,
)
from mmprompt.tuning.adapter import adapter_parameter_count
from mmprompt.tuning.baselines import bitfit_selects
from mmprompt.tuning.lora import lora_parameter_count
from mmprompt.tuning.testing import ToyVisionBart, tiny_bart

D, FFN, V, L = 16, 32, 48, 2  # tiny_bart(): d_model, ffn, vocab, layers per stack
GEN = dict(do_sample=False, max_new_tokens=5, suppress_tokens=[2], eos_token_id=2, pad_token_id=1)


pytestmark = pytest.mark.usefixtures("one_thread")


def _io(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (2, 6), generator=g), torch.randint(3, V, (2, 4), generator=g)


def _logits(model, x, y, **kw):
    with torch.no_grad():
        return model(input_ids=x, decoder_input_ids=y, **kw).logits


METHODS = [
    FinetuneConfig(),
    FinetuneConfig(freeze_token_embeddings=True),
    BitFitConfig(),
    BitFitConfig(rule="all_biases"),
    AdapterConfig(dim=4, zero_init_up=False),
    LoRAConfig(rank=4),
    ShallowPromptConfig(length=3, init_std=1.0),
    PrefixConfig(length=3, dropout=0.0),
]


@pytest.mark.parametrize("config", METHODS, ids=lambda c: type(c).__name__)
def test_every_method_trains_exactly_its_parameters_and_removes_cleanly(config):
    model = tiny_bart()
    x, y = _io()
    before = _logits(model, x, y)
    handle = apply_method(model, config)
    assert method_name(model) is not None
    model.train()
    model(input_ids=x, labels=y).loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
        else:
            assert param.grad is None, name
    model.zero_grad(set_to_none=True)
    handle.remove()
    model.eval()
    assert method_name(model) is None
    assert torch.equal(_logits(model, x, y), before)
    assert all(p.requires_grad for p in model.parameters())
    assert sorted(n for n, _ in model.named_parameters()) == sorted(n for n, _ in tiny_bart().named_parameters())


def test_finetune_counts():
    model = tiny_bart()
    total = sum(p.numel() for p in model.parameters())
    apply_method(model, FinetuneConfig())
    assert count_parameters(model)["trainable"] == total
    remove_method(model)
    apply_method(model, FinetuneConfig(freeze_token_embeddings=True))
    assert count_parameters(model)["trainable"] == total - V * D  # tied: encoder, decoder and lm_head


def test_bitfit_counts_match_formulas():
    model = tiny_bart()
    apply_method(model, BitFitConfig())
    # encoder layer: self_attn_layer_norm, final_layer_norm, fc2 (d each) + fc1 (ffn);
    # a decoder layer adds encoder_attn_layer_norm
    assert count_parameters(model)["trainable"] == L * (3 * D + FFN) + L * (4 * D + FFN)
    remove_method(model)
    apply_method(model, BitFitConfig(rule="all_biases"))
    # + 4 attention projection biases per attention module and the two layernorm_embedding biases
    assert count_parameters(model)["trainable"] == L * (7 * D + FFN) + L * (12 * D + FFN) + 2 * D


def _ofa_base_bias_names():
    """(name, numel) of every bias-like parameter of an HF-format ofa-base (d 768, ffn 3072, 6+6 layers)."""
    d, ffn, names = 768, 3072, []
    for stack, extra in (("encoder", []), ("decoder", ["cross_attn_layer_norm", "cross_attn_mid_layer_norm"])):
        for i in range(6):
            pre = f"{stack}.layers.{i}"
            for ln in ["self_attn_layer_norm", "self_attn_mid_layer_norm", "final_layer_norm", *extra]:
                names.append((f"{pre}.{ln}.bias", d))
            names.append((f"{pre}.ffn_layer_norm.bias", ffn))
            names += [(f"{pre}.fc1.bias", ffn), (f"{pre}.fc2.bias", d)]
            attns = ["self_attn"] + (["cross_attn"] if stack == "decoder" else [])
            names += [(f"{pre}.{a}.{p}.bias", d) for a in attns for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        names += [(f"{stack}.layer_norm.bias", d), (f"{stack}.layernorm_embedding.bias", d)]
    names += [("encoder.patch_layernorm_embedding.bias", d), ("decoder.code_layernorm_embedding.bias", d)]
    return names


def test_bitfit_ofa_rule_on_ofa_names_gives_the_reference_count():
    names = _ofa_base_bias_names()
    assert sum(n for name, n in names if bitfit_selects(name, "ofa")) == 70_656
    assert sum(n for name, n in names if bitfit_selects(name, "literal")) > 70_656


@pytest.mark.parametrize("dim,stacks", [(4, ("encoder", "decoder")), (7, ("decoder",))])
def test_adapter_count_matches_formula(dim, stacks):
    model = tiny_bart()
    apply_method(model, AdapterConfig(dim=dim, stacks=stacks))
    assert count_parameters(model)["trainable"] == adapter_parameter_count(D, dim, L * len(stacks))
    assert count_parameters(model)["groups"]["adapter"]["trainable"] == adapter_parameter_count(D, dim, L * len(stacks))


def test_ofa_base_adapter_formula_matches_reference():
    assert adapter_parameter_count(768, 100, 12) == 1_853_616  # "base 1.85M" in the reference


def test_zero_init_adapter_and_lora_start_as_the_backbone():
    x, y = _io(1)
    for config, changed in [
        (AdapterConfig(dim=4), AdapterConfig(dim=4, zero_init_up=False)),
        (LoRAConfig(rank=2), None),
    ]:
        model = tiny_bart()
        before = _logits(model, x, y)
        apply_method(model, config)
        assert torch.equal(_logits(model, x, y), before)
        remove_method(model)
        if changed is not None:
            apply_method(model, changed)
            assert not torch.equal(_logits(model, x, y), before)  # OFA init: a small change


def test_adapter_acts_on_fc2_output():
    model = tiny_bart()
    apply_method(model, AdapterConfig(dim=4))
    layer = model.model.encoder.layers[0]
    with torch.no_grad():
        layer.adapter.up.bias.fill_(0.25)
        h = torch.randn(3, FFN)
        assert torch.allclose(layer.fc2(h), torch.nn.functional.linear(h, layer.fc2.weight, layer.fc2.bias) + 0.25)


@pytest.mark.parametrize(
    "targets,stacks,cross,n_attn,n_fc1,n_fc2",
    [
        (("q_proj", "v_proj"), ("encoder", "decoder"), True, 2 * 3 * L, 0, 0),
        (("q_proj",), ("encoder",), False, L, 0, 0),
        (("k_proj",), ("decoder",), False, L, 0, 0),
        (("out_proj", "fc1", "fc2"), ("encoder", "decoder"), True, 3 * L, 2 * L, 2 * L),
    ],
)
def test_lora_count_matches_formula(targets, stacks, cross, n_attn, n_fc1, n_fc2):
    model = tiny_bart()
    r = 3
    apply_method(model, LoRAConfig(rank=r, targets=targets, stacks=stacks, cross_attention=cross))
    shapes = [(D, D)] * n_attn + [(D, FFN)] * n_fc1 + [(FFN, D)] * n_fc2
    assert count_parameters(model)["trainable"] == lora_parameter_count(shapes, r)
    assert count_parameters(model)["groups"]["lora"]["trainable"] == lora_parameter_count(shapes, r)


def test_lora_update_is_alpha_over_r_times_BA():
    model = tiny_bart()
    apply_method(model, LoRAConfig(rank=2, alpha=6.0, targets=("q_proj",), stacks=("encoder",)))
    q = model.model.encoder.layers[1].self_attn.q_proj
    with torch.no_grad():
        q.lora.B.normal_()
        h = torch.randn(4, D)
        expected = torch.nn.functional.linear(h, q.weight, q.bias) + 3.0 * h @ q.lora.A.t() @ q.lora.B.t()
        torch.testing.assert_close(q(h), expected)


def test_batchnorm_frozen_for_light_methods_but_not_plain_finetune():
    pixels, ids = torch.randn(2, 3, 9, 9), torch.randint(3, V, (2, 4))
    for config, frozen in [(BitFitConfig(), True), (LoRAConfig(), True), (FinetuneConfig(), False),
                           (FinetuneConfig(freeze_batchnorm=True), True)]:
        torch.manual_seed(0)
        model = ToyVisionBart()
        bn = model.vision_stem[1]
        apply_method(model, config)
        mean = bn.running_mean.clone()
        model.train()
        model(pixels, ids, labels=ids)
        assert torch.equal(bn.running_mean, mean) == frozen, config


def test_shallow_prompt_equals_prepending_the_tokens_it_was_initialised_from():
    ids = (5, 9, 11)
    model = tiny_bart()
    x, y = _io(2)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    x = x.masked_fill(mask == 0, 1)
    prompted = torch.cat([torch.tensor([ids] * 2), x], dim=1)
    prompted_mask = torch.cat([torch.ones(2, 3, dtype=torch.long), mask], dim=1)
    reference = _logits(model, prompted, y, attention_mask=prompted_mask)
    reference_gen = model.generate(prompted, attention_mask=prompted_mask, **GEN)
    reference_beam = model.generate(prompted, attention_mask=prompted_mask, num_beams=3, **GEN)

    prompt = apply_method(model, ShallowPromptConfig(length=3, init="vocab", init_token_ids=ids))
    assert count_parameters(model)["trainable"] == 3 * D
    torch.testing.assert_close(_logits(model, x, y, attention_mask=mask), reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.generate(x, attention_mask=mask, **GEN), reference_gen)
    assert torch.equal(model.generate(x, attention_mask=mask, num_beams=3, **GEN), reference_beam)
    torch.testing.assert_close(_logits(model, x, y), _logits(model, x, y, attention_mask=torch.ones(2, 6)))
    prompt.remove()
    assert torch.equal(_logits(model, prompted, y, attention_mask=prompted_mask), reference)


@pytest.mark.parametrize(
    "factory,kwargs,field",
    [
        (FinetuneConfig, {"freeze_token_embeddings": "yes"}, "freeze_token_embeddings"),
        (BitFitConfig, {"rule": "layer_norm"}, "rule"),
        (AdapterConfig, {"dim": 0}, "dim"),
        (AdapterConfig, {"stacks": ("vision",)}, "stacks"),
        (LoRAConfig, {"rank": 0}, "rank"),
        (LoRAConfig, {"alpha": -1}, "alpha"),
        (LoRAConfig, {"dropout": 1.5}, "dropout"),
        (LoRAConfig, {"targets": ("qkv",)}, "targets"),
        (LoRAConfig, {"stacks": ()}, "stacks"),
        (ShallowPromptConfig, {"length": 0}, "length"),
        (ShallowPromptConfig, {"init": "zeros"}, "init"),
    ],
)
def test_bad_configs_raise_naming_the_field(factory, kwargs, field):
    with pytest.raises(ValueError, match=field):
        factory(**kwargs)


def test_apply_method_rejects_unknown_configs_and_second_methods():
    model = tiny_bart()
    with pytest.raises(ValueError, match="not a method config"):
        apply_method(model, {"length": 4})
    apply_method(model, BitFitConfig())
    with pytest.raises(ValueError, match="already has method 'bitfit'"):
        apply_method(model, LoRAConfig())
    assert isinstance(remove_method(model), BitFitConfig)
    with pytest.raises(ValueError, match="nothing to remove"):
        remove_method(model)


def test_the_method_registry_is_the_one_list_of_methods():
    """tune, the CLI, the profiles' learning rates and the notebook grids all use registered names only."""
    from mmprompt.experiment.cli import build_parser
    from mmprompt.experiment.profiles import GPU_LR, NANO_LR
    from mmprompt.experiment.tune import resolve_method
    from mmprompt.tuning.registry import METHODS, method_spec, trained_methods
    from mmprompt.workbook.api import GRIDS

    assert set(NANO_LR) == set(GPU_LR) == set(trained_methods()) == set(METHODS) - {"zero-shot"}
    for name, spec in METHODS.items():
        assert resolve_method(name)[0] == name and (spec.config is None or method_spec(spec.config()) is spec)
    choices = next(a.choices for a in build_parser()._actions if a.dest == "method")
    assert sorted(choices) == sorted(METHODS)
    for grid in ("methods", "light_methods", "efficiency_methods"):
        for names in GRIDS[grid].values():
            assert set(names) <= set(METHODS), (grid, names)
    with pytest.raises(ValueError, match="shallow_prompt.*allowed"):
        method_spec("shallow_prompt")
