"""OFA forward behaviour: caching, padding, embeddings inputs, image hooks, bad input."""

import pytest
import torch

from mmprompt.models.ofa import OFAModel
from mmprompt.models.ofa.testing import make_batch, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> OFAModel:
    return tiny_model(vocab_size=96, seed=0)  # ofa-nano preset, random weights


def _logits(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw).logits


def test_forward_shapes(model):
    batch = make_batch(model.config, (7, 5), (4, 3), image_size=64)
    out = model(**batch)
    assert out.logits.shape == (2, 4, 96)
    assert out.encoder_outputs.last_hidden_state.shape == (2, 16 + 7, model.config.d_model)
    assert out.encoder_outputs.padding_mask.tolist()[1][-2:] == [True, True]
    assert out.past_key_values is None


def test_incremental_decoding_equals_full_forward(model):
    batch = make_batch(model.config, (7, 5), (6, 4), image_size=128)  # 8×8 = 64 patches
    with torch.no_grad():
        enc = model.encode(input_ids=batch["input_ids"], patch_images=batch["patch_images"],
                           patch_masks=batch["patch_masks"])
        full, _ = model.decode(batch["decoder_input_ids"], enc, use_cache=False)
        past, steps = None, []
        for t in range(batch["decoder_input_ids"].shape[1]):
            logits, past = model.decode(batch["decoder_input_ids"][:, t:t + 1], enc, past)
            steps.append(logits)
        # two tokens at a time from a cache also works
        head, past2 = model.decode(batch["decoder_input_ids"][:, :2], enc)
        tail, _ = model.decode(batch["decoder_input_ids"][:, 2:], enc, past2)
    assert past.length == 6
    assert (full - torch.cat(steps, 1)).abs().max().item() <= 1e-5
    assert (full - torch.cat([head, tail], 1)).abs().max().item() <= 1e-5


def test_padded_batch_equals_each_sample_alone(model):
    batch = make_batch(model.config, (8, 5), (5, 3), image_size=64, seed=3)
    together = _logits(model, batch)
    for i, (n_src, n_tgt) in enumerate([(8, 5), (5, 3)]):
        alone = {
            "input_ids": batch["input_ids"][i:i + 1, :n_src],
            "patch_images": batch["patch_images"][i:i + 1],
            "patch_masks": batch["patch_masks"][i:i + 1],
            "decoder_input_ids": batch["decoder_input_ids"][i:i + 1, :n_tgt],
        }
        single = _logits(model, alone)
        assert (together[i, :n_tgt] - single[0]).abs().max().item() <= 1e-5


def test_inputs_embeds_replace_token_embeddings(model):
    batch = make_batch(model.config, (6, 4), image_size=64)
    ref = _logits(model, batch)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    mask = batch["input_ids"].ne(model.config.pad_token_id).long()
    via_embeds = _logits(model, {k: v for k, v in batch.items() if k != "input_ids"},
                         inputs_embeds=embeds, attention_mask=mask)
    assert torch.allclose(ref, via_embeds, atol=1e-6)
    shifted = _logits(model, {k: v for k, v in batch.items() if k != "input_ids"},
                      inputs_embeds=embeds + 0.5 * torch.randn_like(embeds), attention_mask=mask)
    assert not torch.allclose(ref, shifted, atol=1e-3)


def test_image_patch_embeddings_reachable_through_image_proj_hook(model):
    batch = make_batch(model.config, (6, 6), image_size=64)
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["patches"] = output

    handle = model.encoder.image_proj.register_forward_hook(keep)
    try:
        out = model(**batch)
        out.logits.sum().backward()
    finally:
        handle.remove()
        model.zero_grad()
    patches = captured["patches"]
    assert patches.shape == (2, 16, model.config.d_model)
    assert patches.grad is not None and patches.grad.abs().sum() > 0
    ref = _logits(model, batch)
    handle = model.encoder.image_proj.register_forward_hook(lambda m, i, o: o + 0.1 * torch.sign(o))
    try:
        perturbed = _logits(model, batch)
    finally:
        handle.remove()
    assert not torch.allclose(ref, perturbed, atol=1e-4)


def test_sample_without_image_equals_text_only_run(model):
    batch = make_batch(model.config, (6, 6), image_size=64, seed=5)
    batch["patch_masks"] = torch.tensor([True, False])
    mixed = _logits(model, batch)
    text_only = _logits(model, {"input_ids": batch["input_ids"][1:],
                                "decoder_input_ids": batch["decoder_input_ids"][1:]})
    assert (mixed[1] - text_only[0]).abs().max().item() <= 1e-5
    with_image = _logits(model, {k: v[:1] for k, v in batch.items()})
    assert (mixed[0] - with_image[0]).abs().max().item() <= 1e-5


def test_fully_padded_decoder_row_gives_finite_logits(model):
    batch = make_batch(model.config, (5, 5), image_size=None)
    batch["decoder_input_ids"][1] = model.config.pad_token_id
    assert torch.isfinite(_logits(model, batch)).all()


def test_bfloat16_autocast_with_padding_stays_finite(model):
    batch = make_batch(model.config, (7, 3), (4, 2), image_size=32)
    batch["decoder_input_ids"][1, 0] = model.config.pad_token_id  # a fully blocked query row
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(**batch).logits
    assert torch.isfinite(logits.float()).all()
    assert (logits.float() - _logits(model, batch))[0].abs().max() < 0.5


def test_position_tables_receive_gradients():
    model = tiny_model(vocab_size=64, seed=1, preset="ofa-nano-small").train()
    batch = make_batch(model.config, (6, 4), image_size=32)
    model(**batch).logits.logsumexp(-1).sum().backward()
    for name in ("encoder.token_rel_pos_table_list.0.weight", "encoder.image_rel_pos_table_list.1.weight",
                 "encoder.pos_q_linear.weight", "decoder.token_rel_pos_table_list.2.weight",
                 "decoder.cross_pos_k_linear.weight", "decoder.self_pos_q_linear.weight",
                 "encoder.embed_images.layer1.0.conv1.weight", "decoder.layers.0.cross_attn.c_attn"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.get_parameter("decoder.image_rel_pos_table_list.0.weight").grad is None  # image codes only


def test_eval_is_deterministic_and_train_uses_dropout():
    model = tiny_model(vocab_size=64, seed=2, preset="ofa-nano-small")
    batch = make_batch(model.config, (6, 4), image_size=32)
    assert torch.equal(_logits(model, batch), _logits(model, batch))
    model.train()
    torch.manual_seed(0)
    a = _logits(model, batch)
    b = _logits(model, batch)
    assert not torch.allclose(a, b)


def test_expand_and_reorder_encoder_outputs(model):
    batch = make_batch(model.config, (6, 4), image_size=32)
    with torch.no_grad():
        enc = model.encode(input_ids=batch["input_ids"], patch_images=batch["patch_images"])
    wide = model.expand_encoder_outputs(enc, 3)
    assert wide.last_hidden_state.shape[0] == 6
    assert torch.equal(wide.last_hidden_state[3], enc.last_hidden_state[1])
    back = model.reorder_encoder_outputs(wide, torch.tensor([5, 0]))
    assert torch.equal(back.padding_mask, enc.padding_mask.flip(0))


def test_image_too_large_names_the_maximum(model):
    batch = make_batch(model.config, (5,), image_size=None)
    with pytest.raises(ValueError, match=r"at most 256 pixels"):
        model(**batch, patch_images=torch.zeros(1, 3, 272, 272))


def test_token_id_out_of_vocab_rejected(model):
    batch = make_batch(model.config, (5,), image_size=None)
    batch["input_ids"][0, 2] = 96
    with pytest.raises(ValueError, match=r"input_ids.*96.*vocab_size=96"):
        model(**batch)
    batch = make_batch(model.config, (5,), image_size=None)
    batch["decoder_input_ids"][0, 1] = -1
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(**batch)


@pytest.mark.parametrize("kwargs,match", [
    ({"decoder_input_ids": torch.zeros(1, 2, dtype=torch.long)}, "input_ids or inputs_embeds"),
    ({"input_ids": torch.zeros(1, 3, dtype=torch.long)}, "decoder_input_ids is required"),
    ({"input_ids": torch.zeros(1, 300, dtype=torch.long), "decoder_input_ids": torch.zeros(1, 2, dtype=torch.long)},
     "max_position_embeddings"),
    ({"input_ids": torch.zeros(2, 3, dtype=torch.long), "decoder_input_ids": torch.zeros(2, 2, dtype=torch.long),
      "patch_images": torch.zeros(3, 3, 32, 32)}, "patch_images"),
    ({"input_ids": torch.zeros(1, 3, dtype=torch.long), "inputs_embeds": torch.zeros(1, 5, 128),
      "decoder_input_ids": torch.zeros(1, 2, dtype=torch.long)}, "attention_mask"),
])
def test_bad_inputs_rejected(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model(**kwargs)
