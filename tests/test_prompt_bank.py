"""A prompt bank on the shipped OFA nano: a mixed batch of four tasks' prompts (different lengths, sites,
depths, one reparameterised) equals, row by row, each row run alone with its prompt — forward logits,
greedy, beam search (expanded batch), trie-constrained and all-candidate decoding; bad input refused
before any work; training updates each prompt from its own rows only."""

import json

import pytest
import torch

from mmprompt.data.tasks import Trie
from mmprompt.eval.decoding import beam_search, greedy_search, score_candidates
from mmprompt.models.ofa.loading import from_pretrained
from mmprompt.models.ofa.testing import make_batch
from mmprompt.tuning import PrefixConfig, apply_prefix, save_prompt
from mmprompt.tuning.bank import apply_bank, bank_of, remove_bank
from mmprompt.tuning.prefix import remove_prefix

NANO = "data/checkpoints/ofa-nano"
TOL = 1e-5
PROMPTS = {
    "refcoco": PrefixConfig(length=6, dropout=0.0, init_std=0.5, seed=1),
    "caption": PrefixConfig(length=3, sites=("decoder_cross",), depth=2, depth_from="top", dropout=0.0,
                            init_std=0.5, seed=2),
    "vqa": PrefixConfig(length=8, sites=("encoder_self", "decoder_self", "decoder_cross"), layers={"encoder": [0, 3], "decoder": [0, 3]},
                        dropout=0.0, init_std=0.5, seed=3),
    "snli_ve": PrefixConfig(length=4, reparam=True, reparam_hidden=16, dropout=0.0, init_std=0.5, seed=4),
}
ROUTE = ["refcoco", "caption", None, "vqa", "snli_ve", "caption"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    model = from_pretrained(NANO)
    bank = apply_bank(model)
    for name, config in PROMPTS.items():
        bank.add(name, config)
    yield model
    remove_bank(model)


@pytest.fixture(scope="module")
def batch(model):
    # different text and target lengths: every row but the longest is padded
    return make_batch(model.config, (9, 5, 7, 6, 8, 4), (5, 3, 4, 2, 5, 4), image_size=64, seed=3)


def row_alone(batch, i):
    """Row ``i`` without its padding."""
    n = int(batch["input_ids"][i].ne(1).sum())
    t = int(batch["decoder_input_ids"][i].ne(1).sum())
    return {"input_ids": batch["input_ids"][i:i + 1, :n], "patch_images": batch["patch_images"][i:i + 1],
            "patch_masks": batch["patch_masks"][i:i + 1], "decoder_input_ids": batch["decoder_input_ids"][i:i + 1, :t]}


def logits(model, batch, route):
    with torch.no_grad(), bank_of(model).route(route):
        return model(**batch).logits


def test_mixed_batch_logits_equal_each_row_alone(model, batch):
    mixed = logits(model, batch, ROUTE)
    plain = logits(model, batch, [None] * len(ROUTE))
    for i, name in enumerate(ROUTE):
        alone = row_alone(batch, i)
        t = alone["decoder_input_ids"].shape[1]
        assert (mixed[i, :t] - logits(model, alone, [name])[0]).abs().max() <= TOL
        if name is None:
            assert (mixed[i, :t] - plain[i, :t]).abs().max() <= TOL
        else:  # the prompt really acts on its row
            assert (mixed[i, :t] - plain[i, :t]).abs().max() > 1e-2


def test_no_route_and_none_rows_are_the_plain_backbone(model, batch):
    bank = bank_of(model)
    with torch.no_grad():
        unrouted = model(**batch).logits
    with torch.no_grad(), bank.route([None] * len(ROUTE)):
        nones = model(**batch).logits
    fresh = from_pretrained(NANO)
    with torch.no_grad():
        reference = fresh(**batch).logits
    assert torch.equal(unrouted, reference) and torch.equal(nones, reference)


def test_single_prompt_route_equals_apply_prefix(model, batch):
    """A route with one prompt on every row is exactly the one-prompt model of apply_prefix."""
    single = from_pretrained(NANO)
    module = apply_prefix(single, PROMPTS["vqa"])
    module.load_state_dict(bank_of(model).prompt("vqa").state_dict())
    try:
        with torch.no_grad():
            expected = single(**batch).logits
    finally:
        remove_prefix(single)
    assert torch.equal(logits(model, batch, ["vqa"] * len(ROUTE)), expected)


def _decode_inputs(batch, i=None):
    keys = ("input_ids", "patch_images", "patch_masks")
    if i is None:
        return {k: batch[k] for k in keys}
    alone = row_alone(batch, i)
    return {k: alone[k] for k in keys}


@pytest.mark.parametrize("beam", [1, 3])
def test_greedy_and_beam_search_mixed_equals_alone(model, batch, beam):
    bank = bank_of(model)
    kwargs = dict(max_len=5, min_len=1)
    search = greedy_search if beam == 1 else (lambda m, b, **kw: beam_search(m, b, beam_size=beam, **kw))
    with bank.route(ROUTE):
        mixed = search(model, _decode_inputs(batch), **kwargs)
    for i, name in enumerate(ROUTE):
        with bank.route([name]):
            alone = search(model, _decode_inputs(batch, i), **kwargs)[0]
        hyps_mixed, hyps_alone = (mixed[i], alone) if beam > 1 else ([mixed[i]], [alone])
        assert [h.tokens for h in hyps_mixed] == [h.tokens for h in hyps_alone]
        assert max(abs(a.log_prob - b.log_prob) for a, b in zip(hyps_mixed, hyps_alone)) <= TOL


def test_trie_constrained_and_all_candidate_decoding_mixed_equals_alone(model, batch):
    bank = bank_of(model)
    answers = [[10, 11], [12], [13, 14, 15], [10, 16]]
    trie = Trie(answers)
    candidates = [a + [2] for a in answers]
    with bank.route(ROUTE):
        beams = beam_search(model, _decode_inputs(batch), beam_size=2, max_len=4, constraint=trie)
        scores = score_candidates(model, _decode_inputs(batch), candidates, chunk_size=3, constraint=trie)
    for i, name in enumerate(ROUTE):
        with bank.route([name]):
            alone = beam_search(model, _decode_inputs(batch, i), beam_size=2, max_len=4, constraint=trie)[0]
            alone_scores = score_candidates(model, _decode_inputs(batch, i), candidates, chunk_size=3,
                                            constraint=trie)[0]
        assert [h.tokens for h in beams[i]] == [h.tokens for h in alone]
        assert all(h.tokens in answers for h in beams[i])
        assert (scores[i] - alone_scores).abs().max() <= TOL


def test_incremental_decoding_matches_full_forward_with_mixed_route(model, batch):
    """The cache holds real keys only: step-by-step logits equal the full decoder pass."""
    bank = bank_of(model)
    dec = batch["decoder_input_ids"]
    with torch.no_grad(), bank.route(ROUTE):
        enc = model.encode(input_ids=batch["input_ids"], patch_images=batch["patch_images"],
                           patch_masks=batch["patch_masks"])
        full, _ = model.decode(dec, enc, use_cache=False)
        past, steps = None, []
        for t in range(dec.shape[1]):
            step, past = model.decode(dec[:, t:t + 1], enc, past, use_cache=True)
            steps.append(step)
    assert (torch.cat(steps, dim=1) - full).abs().max() <= TOL


def test_training_updates_each_prompt_from_its_own_rows(model, batch):
    bank_of(model)  # four prompts on the model
    names = ["refcoco", "caption", "refcoco", "vqa"]
    sub = {k: v[:4] for k, v in batch.items()}
    mixed = _grads(model, sub, names)
    assert set(mixed) == {"refcoco", "caption", "vqa"}  # snli_ve: not in the batch, no gradient
    for task in ("refcoco", "caption", "vqa"):
        rows = [i for i, n in enumerate(names) if n == task]
        alone = _grads(model, {k: v[rows] for k, v in sub.items()}, [task] * len(rows))
        assert set(alone) == {task}
        for a, b in zip(mixed[task], alone[task]):
            assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("mmprompt_bank."))


def _grads(model, batch, names):
    bank = bank_of(model)
    model.zero_grad(set_to_none=True)  # eval mode: the backbone's dropout off, so both passes are comparable
    with bank.route(names):
        out = model(**batch).logits
    out.float().pow(2).sum().backward()  # a sum over rows: each row's term reaches its prompt only
    grads = {n: [p.grad.clone() for p in bank.prompt(n).parameters()] for n in bank.names
             if any(p.grad is not None for p in bank.prompt(n).parameters())}
    model.zero_grad(set_to_none=True)
    return grads


# --- bad input: refused before any work ---------------------------------------------------------------------
def test_unknown_prompt_name_refused(model):
    bank = bank_of(model)
    with pytest.raises(ValueError, match=r"unknown prompt name\(s\) \['ocr'\].*refcoco"):
        bank.set_route(["refcoco", "ocr"])
    assert bank._route is None


def test_prompt_from_another_backbone_refused_with_differences(model, tmp_path):
    other = from_pretrained("data/checkpoints/ofa-nano-small")
    apply_prefix(other, PrefixConfig(length=4))
    save_prompt(other, tmp_path / "small")
    bank = bank_of(model)
    good = tmp_path / "good"
    bank.save("caption", good)
    before = bank.names
    with pytest.raises(ValueError, match=r"prompt 'x'.*another backbone:.*encoder layers: saved \d, model 6"):
        bank.load({"ok": good, "x": tmp_path / "small"})
    assert bank.names == before  # the good one was not added either


def test_prompt_whose_depth_exceeds_backbone_refused(model, tmp_path):
    bank = bank_of(model)
    path = bank.save("refcoco", tmp_path / "deep")
    meta = json.loads((path / "prompt.json").read_text())
    meta["config"]["depth"] = 9
    (path / "prompt.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"prompt 'deep'.*depth=9 exceeds the encoder stack's 6 layers"):
        bank.load({"deep": path})
    assert "deep" not in bank


def test_saved_prompts_reload_into_a_fresh_bank_identically(model, batch, tmp_path):
    bank = bank_of(model)
    dirs = {name: bank.save(name, tmp_path / name) for name in PROMPTS}
    fresh = from_pretrained(NANO)
    other = apply_bank(fresh)
    other.load(dirs)
    try:
        assert other.names == list(PROMPTS)
        with torch.no_grad(), other.route(ROUTE):
            reloaded = fresh(**batch).logits
        assert torch.equal(reloaded, logits(model, batch, ROUTE))
    finally:
        remove_bank(fresh)


def test_route_batch_mismatch_refused(model, batch):
    with pytest.raises(ValueError, match="the route has 4 rows, but an attention call got a batch of 6"):
        logits(model, batch, ROUTE[:4])


def test_one_name_routes_every_row_of_any_batch(model, batch):
    bank = bank_of(model)
    with torch.no_grad(), bank.route("vqa"):
        everywhere = model(**batch).logits
        three = model(**{k: v[:3] for k, v in batch.items()}).logits
    assert torch.equal(everywhere, logits(model, batch, ["vqa"] * len(ROUTE)))
    assert (three - everywhere[:3]).abs().max() <= TOL
