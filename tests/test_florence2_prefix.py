"""The one PrefixConfig on Florence-2 (saved and reloaded tiny checkpoint) and on plain BART: all three sites,
depth, reparam/fold, save/load with fingerprint, and transformers' generate (greedy, beams) with prefixes."""

import pytest
import torch

from mmprompt.bench.peers import AttentionProbe
from mmprompt.models.florence2 import (
    TinyFlorence2Spec,
    enable_checkpointing,
    model_inputs,
    save_tiny_florence2,
)
from mmprompt.experiment.florence2 import florence2_backbone
from mmprompt.tuning import (
    PrefixConfig,
    apply_prefix,
    count_parameters,
    fold,
    load_prompt,
    remove_prefix,
    save_prompt,
)
from mmprompt.tuning.testing import tiny_bart

ALL_SITES = ("encoder_self", "decoder_self", "decoder_cross")
P = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_florence2(tmp_path_factory.mktemp("florence2") / "tiny")


@pytest.fixture
def florence(tiny_dir):
    """A fresh Florence-2 backbone loaded from the saved directory."""
    return florence2_backbone(tiny_dir)


def strong(**kw) -> PrefixConfig:
    return PrefixConfig(**{"length": P, "sites": ALL_SITES, "dropout": 0.0, "init_std": 1.0, **kw})


def inputs(backbone, n=2, seed=0):
    """Processor-built inputs: a caption prompt and a grounding prompt on two random images."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    images = [Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]
    texts = ["<CAPTION>", "<CAPTION_TO_PHRASE_GROUNDING>the small red circle"][:n]
    enc = backbone.processor(text=texts, images=images, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "pixel_values": enc["pixel_values"]}


def full_logits(model, x, sequences):
    with torch.no_grad():
        return model(**x, decoder_input_ids=sequences[:, :-1]).logits


def test_cached_greedy_generation_with_prefixes_equals_uncached_forward(florence):
    model = florence.model
    apply_prefix(model, strong())
    x = inputs(florence)
    kw = dict(num_beams=1, max_new_tokens=8)  # otherwise Florence-2's defaults: forced <s>, no-repeat 3
    with AttentionProbe(model) as probe:
        out = model.generate(**x, **kw, output_logits=True, return_dict_in_generate=True)
    hit, total = probe.decoding_calls()
    assert total == 2 * (out.sequences.shape[1] - 1) and hit == total  # every layer, every step
    assert out.sequences[:, 1].eq(0).all()  # Florence-2's forced <s>
    torch.testing.assert_close(torch.stack(out.logits, 1), full_logits(model, x, out.sequences), atol=1e-5, rtol=1e-4)
    assert torch.equal(model.generate(**x, **kw, use_cache=False), out.sequences)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_beam_search_with_prefixes_matches_full_forward(florence, num_beams):
    model = florence.model
    assert model.generation_config.num_beams == 3  # Florence-2's default; beams=1 overrides it
    with torch.no_grad():
        x = inputs(florence, seed=1)
        plain = model.generate(**x, num_beams=num_beams, max_new_tokens=10, output_scores=True,
                               return_dict_in_generate=True)
    apply_prefix(model, strong())
    kw = dict(num_beams=num_beams, max_new_tokens=10, output_scores=True, return_dict_in_generate=True)
    with AttentionProbe(model) as probe:
        out = model.generate(**x, **kw)
    hit, total = probe.decoding_calls()
    assert hit == total > 0
    assert out.sequences.shape[0] == 2
    assert torch.equal(model.generate(**x, num_beams=num_beams, max_new_tokens=10, use_cache=False), out.sequences)
    indices = out.beam_indices if num_beams > 1 else None
    # greedy: processed logits of the chosen tokens; beams: processed log-probs (unforced steps = raw ones)
    transition = model.compute_transition_scores(out.sequences, out.scores, indices)
    full = full_logits(model, x, out.sequences)
    reference = full if num_beams == 1 else full.log_softmax(-1)
    targets = out.sequences[:, 1:]
    recomputed = reference.gather(-1, targets[..., None]).squeeze(-1)[:, : transition.shape[1]]
    free = (transition != 0) & transition.isfinite() & targets[:, : transition.shape[1]].ne(1)
    assert free.sum() >= 4  # forced <s>/</s> steps score 0 and are skipped
    torch.testing.assert_close(transition[free], recomputed[free], atol=1e-4, rtol=1e-4)
    assert not torch.equal(out.scores[1], plain.scores[1])  # step 0 is the forced <s>; then prefixes matter


def test_removing_prefixes_restores_bit_identical_outputs(florence):
    model = florence.model
    x = inputs(florence, seed=2)
    with torch.no_grad():
        logits = model(**x, decoder_input_ids=torch.tensor([[2, 0, 5], [2, 0, 7]])).logits
    sequences = model.generate(**x, max_new_tokens=6)
    apply_prefix(model, strong(reparam=True, reparam_hidden=8))
    with torch.no_grad():
        during = model(**x, decoder_input_ids=torch.tensor([[2, 0, 5], [2, 0, 7]])).logits
    assert (during - logits).abs().max() > 1e-2
    remove_prefix(model)
    with torch.no_grad():
        assert torch.equal(model(**x, decoder_input_ids=torch.tensor([[2, 0, 5], [2, 0, 7]])).logits, logits)
    assert torch.equal(model.generate(**x, max_new_tokens=6), sequences)
    assert all(p.requires_grad for p in model.parameters())


def _batch_grads(model, batch):
    model.zero_grad(set_to_none=True)
    logits = model(**model_inputs(batch)).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["target_ids"].flatten(), ignore_index=1)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _target_batch(backbone):
    x = inputs(backbone, seed=3)
    targets = torch.tensor([[0, 50, 60, 70, 2], [0, 80, 90, 2, 1]])
    decoder = torch.cat([torch.full((2, 1), 2), targets[:, :-1]], 1)
    return {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"], "patch_images": x["pixel_values"],
            "decoder_input_ids": decoder, "target_ids": targets}


def test_gradients_reach_only_prefix_parameters(florence):
    model = florence.model
    apply_prefix(model, strong(reparam=True))
    model.train()
    grads = _batch_grads(model, _target_batch(florence))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("mmprompt_prefix.") for n in names)
    assert set(grads) == names
    assert all(g.abs().max() > 0 for g in grads.values())
    assert any("vision_tower" in n for n, p in model.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("hidden", [None, 12])
def test_gradient_checkpointing_with_prefixes_gives_same_gradients(florence, hidden):
    model = florence.model
    apply_prefix(model, strong(reparam=hidden is not None, reparam_hidden=hidden, init_std=0.5))
    model.train()
    batch = _target_batch(florence)
    plain = _batch_grads(model, batch)
    enable_checkpointing(model)
    assert model.model.language_model.decoder.layers[0].gradient_checkpointing
    checkpointed = _batch_grads(model, batch)
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "choice,expected",
    [({"depth": 1, "depth_from": "top"}, [1]), ({"layers": {"encoder": [0], "decoder": [1]}}, None), ({}, [0, 1])],
)
def test_depth_control_on_florence2(florence, choice, expected):
    model = florence.model
    apply_prefix(model, strong(**choice))
    with AttentionProbe(model) as probe, torch.no_grad():
        model(**inputs(florence), decoder_input_ids=torch.tensor([[2, 0, 5], [2, 0, 7]]))
    reached = probe.reached()
    if expected is None:
        assert reached == {"encoder_self": [0], "decoder_self": [1], "decoder_cross": [1]}
    else:
        assert reached == {kind: expected for kind in ALL_SITES}
    assert all(c.extra in (0, P) for c in probe.calls)


def test_one_prefix_config_on_bart_and_florence2_alike(florence, tmp_path):
    """Same PrefixConfig: same layers and parameter count, fold keeps outputs, prompts round-trip, and a
    prompt refuses a backbone it was not trained on."""
    config = PrefixConfig(length=4, sites=ALL_SITES, depth=1, depth_from="top", reparam=True, reparam_hidden=8, dropout=0.0,
                          init_std=0.5)
    bart = tiny_bart(d_model=32, layers=2, heads=2)
    banks = {"bart": apply_prefix(bart, config), "florence2": apply_prefix(florence.model, config)}
    assert banks["bart"].layers() == banks["florence2"].layers() == {kind: [1] for kind in ALL_SITES}
    assert count_parameters(bart)["trainable"] == count_parameters(florence.model)["trainable"]
    model, x = florence.model, inputs(florence, seed=4)
    dec = torch.tensor([[2, 0, 5, 6], [2, 0, 7, 8]])
    with torch.no_grad():
        before = model(**x, decoder_input_ids=dec).logits
        fold(banks["florence2"])
        after = model(**x, decoder_input_ids=dec).logits
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    assert count_parameters(model)["trainable"] == 3 * 4 * (1 * 2 * 32)
    save_prompt(model, tmp_path / "prompt")
    fresh = florence2_backbone(florence.source)
    loaded = load_prompt(fresh.model, tmp_path / "prompt")
    assert loaded.config.reparam is False
    with torch.no_grad():
        assert torch.equal(fresh.model(**x, decoder_input_ids=dec).logits, after)
    assert torch.equal(fresh.model.generate(**x, max_new_tokens=5), model.generate(**x, max_new_tokens=5))
    with pytest.raises(ValueError, match="architecture: saved Florence2ForConditionalGeneration"):
        load_prompt(tiny_bart(d_model=32, layers=2, heads=2), tmp_path / "prompt")
    other = save_tiny_florence2(tmp_path / "other", spec=TinyFlorence2Spec(seed=7))
    with pytest.raises(ValueError, match="different backbone weights"):
        load_prompt(florence2_backbone(other).model, tmp_path / "prompt")
