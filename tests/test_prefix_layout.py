"""mmprompt.workbook.prefix_layout (tables, shapes, counts without applying) and mmprompt.workbook.widgets (the explorer)."""

import copy

import pytest
import torch

from mmprompt.models.ofa.testing import tiny_model
from mmprompt.workbook.prefix_layout import flat_prefix_parameters, mlp_prefix_parameters, prefix_budget, prefix_layout
from mmprompt.tuning import PrefixConfig, apply_prefix, count_parameters


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=64, preset="ofa-nano-small")


CONFIGS = [
    PrefixConfig(length=5),
    PrefixConfig(length=3, depth=1, depth_from="top", sites=("encoder_self", "decoder_cross")),
    PrefixConfig(length=4, reparam=True, reparam_hidden=16),
    PrefixConfig(length=2, reparam=True, layers={"decoder": [0]}, sites=("decoder_self",)),
]


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_budget_equals_the_count_of_the_applied_prefix(model, config):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    budget = prefix_budget(model, config)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    applied = copy.deepcopy(model)
    bank = apply_prefix(applied, config)
    counts = count_parameters(applied)
    assert budget["trainable"] == counts["trainable"]
    assert budget["backbone"] == counts["backbone_total"]
    assert budget["after_fold"] == sum(t.numel() for t in bank.tables().values())
    assert {s["site"]: s["layers"] for s in budget["sites"]} == bank.layers()


def test_shapes_and_formulas(model):
    cfg = model.config
    heads = cfg.encoder_attention_heads
    layout = prefix_layout(model, PrefixConfig(length=7))
    assert [s.site for s in layout] == ["encoder_self", "decoder_self"]
    enc = layout[0]
    assert enc.kv_shape == (1, heads, 7, cfg.d_model // heads)
    assert enc.table_shape == (7, cfg.encoder_layers * 2 * cfg.d_model)
    total = sum(s.flat_parameters for s in layout)
    assert total == 7 * (cfg.encoder_layers + cfg.decoder_layers) * 2 * cfg.d_model  # the paper's formula
    assert flat_prefix_parameters(2, 3, 8) == 96
    assert mlp_prefix_parameters(2, 10, 4, 3) == 2 * 4 + (4 * 3 + 3) + (3 * 10 + 10)


def test_layout_rejects_what_apply_rejects(model):
    with pytest.raises(ValueError, match="depth=99"):
        prefix_layout(model, PrefixConfig(length=2, depth=99))
    with pytest.raises(ValueError, match="PrefixConfig"):
        prefix_layout(model, {"length": 2})


def test_explorer_reacts_to_its_sliders(model):
    from mmprompt.workbook import widgets as w

    box = w.prefix_explorer(model, PrefixConfig(length=4), max_length=32)
    length, depth, report = box.children
    assert w.SLIDER_CLASS in length._dom_classes and w.DEPTH_CLASS in depth._dom_classes
    assert w.OUTPUT_CLASS in report._dom_classes
    layers = model.config.encoder_layers
    assert (length.value, length.max, depth.value, depth.max) == (4, 32, layers, layers)
    per_token = (model.config.encoder_layers + model.config.decoder_layers) * 2 * model.config.d_model
    assert f"{4 * per_token:,} trainable" in report.value
    length.value = 9
    assert f"P = 9, depth = every layer: {9 * per_token:,} trainable" in report.value
    depth.value = 1
    assert f"{9 * 2 * 2 * model.config.d_model:,} trainable" in report.value and "1 layer(s)" in report.value
    with pytest.raises(ValueError, match="max_length=2"):
        w.prefix_explorer(model, PrefixConfig(length=4), max_length=2)
