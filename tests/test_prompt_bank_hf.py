"""The prompt bank on transformers-native backbones (tiny BART, tiny Florence-2 through transformers'
registered attention): a mixed batch equals each row alone with its prompt — forward logits, candidate
scoring on an expanded batch, greedy / beam / constrained ``generate`` with the cache."""

import pytest
import torch

from mmprompt.experiment.florence2 import florence2_backbone
from mmprompt.models.florence2 import save_tiny_florence2
from mmprompt.tuning import PrefixConfig
from mmprompt.tuning.bank import apply_bank, bank_of, remove_bank
from mmprompt.tuning.testing import tiny_bart

TOL = 1e-5
PROMPTS = {
    "refcoco": PrefixConfig(length=4, sites=("encoder_self", "decoder_self", "decoder_cross"), dropout=0.0,
                            init_std=1.0, seed=1),
    "caption": PrefixConfig(length=2, dropout=0.0, init_std=1.0, seed=2),
    "vqa": PrefixConfig(length=5, sites=("decoder_cross",), depth=1, depth_from="top", dropout=0.0,
                        init_std=1.0, seed=3),
    "snli_ve": PrefixConfig(length=3, reparam=True, reparam_hidden=8, dropout=0.0, init_std=1.0, seed=4),
}
ROUTE = ["refcoco", "caption", None, "vqa", "snli_ve"]


pytestmark = pytest.mark.usefixtures("one_thread")


def with_bank(model):
    bank = apply_bank(model)
    for name, config in PROMPTS.items():
        bank.add(name, config)
    return model


@pytest.fixture(scope="module")
def bart():
    model = with_bank(tiny_bart(seed=0))
    yield model
    remove_bank(model)


@pytest.fixture(scope="module")
def florence(tmp_path_factory):
    backbone = florence2_backbone(save_tiny_florence2(tmp_path_factory.mktemp("florence2") / "tiny"))
    with_bank(backbone.model)
    yield backbone
    remove_bank(backbone.model)


def bart_inputs(lengths=(7, 4, 6, 3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), 1)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, 48, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": ids.ne(1).long()}


def florence_inputs(backbone, seed=0):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    images = [Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()) for _ in ROUTE]
    texts = ["<CAPTION>", "<CAPTION_TO_PHRASE_GROUNDING>the small red circle", "<OD>", "<CAPTION>",
             "<CAPTION_TO_PHRASE_GROUNDING>a cat"]
    enc = backbone.processor(text=texts, images=images, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "pixel_values": enc["pixel_values"]}


def row(x, i):
    n = int(x["attention_mask"][i].sum())
    out = {"input_ids": x["input_ids"][i:i + 1, :n], "attention_mask": x["attention_mask"][i:i + 1, :n]}
    if "pixel_values" in x:
        out["pixel_values"] = x["pixel_values"][i:i + 1]
    return out


@pytest.fixture(params=["bart", "florence"])
def case(request):
    if request.param == "bart":
        return request.getfixturevalue("bart"), bart_inputs()
    backbone = request.getfixturevalue("florence")
    return backbone.model, florence_inputs(backbone)


def test_mixed_logits_and_candidate_scores_equal_each_row_alone(case):
    model, x = case
    bank = bank_of(model)
    candidates = torch.tensor([[2, 0, 5, 6, 2], [2, 0, 7, 2, 1], [2, 0, 9, 10, 11]])
    c = len(candidates)

    def scores(inputs, route):
        n = inputs["input_ids"].shape[0]  # every sample × every candidate: rows repeated consecutively
        wide = {k: v.repeat_interleave(c, dim=0) for k, v in inputs.items()}
        with torch.no_grad(), bank.route(route):
            logits = model(**wide, decoder_input_ids=candidates[:, :-1].repeat(n, 1)).logits
            plain = model(**inputs, decoder_input_ids=candidates[:1, :-1].expand(n, -1)).logits
        lp = logits.log_softmax(-1).gather(-1, candidates[:, 1:].repeat(n, 1)[..., None]).squeeze(-1)
        return lp.view(n, c, -1), plain

    mixed, mixed_first = scores(x, ROUTE)
    with torch.no_grad():
        unprompted = model(**x, decoder_input_ids=candidates[:1, :-1].expand(len(ROUTE), -1)).logits
    for i, name in enumerate(ROUTE):
        alone, alone_first = scores(row(x, i), [name])
        assert (mixed[i] - alone[0]).abs().max() <= TOL
        assert (mixed_first[i] - alone_first[0]).abs().max() <= TOL
        gap = (mixed_first[i] - unprompted[i]).abs().max()
        assert gap <= TOL if name is None else gap > 1e-3


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_mixed_equals_alone(case, num_beams):
    model, x = case
    bank = bank_of(model)
    pad = getattr(model.config, "text_config", model.config).pad_token_id
    allowed = [0, 2, 5, 6, 7, 9, 10]  # a constraint: only these tokens may be generated
    for constrained in (False, True):
        kw = dict(num_beams=num_beams, max_new_tokens=6, do_sample=False, no_repeat_ngram_size=0,
                  prefix_allowed_tokens_fn=(lambda _b, _ids: allowed) if constrained else None)
        with torch.no_grad(), bank.route(ROUTE):
            mixed = model.generate(**x, **kw)
        for i, name in enumerate(ROUTE):
            with torch.no_grad(), bank.route([name]):
                alone = model.generate(**row(x, i), **kw)[0]
            got = mixed[i][: len(alone)]
            assert torch.equal(got, alone), (name, constrained, got, alone)
            assert mixed[i][len(alone):].eq(pad).all()
            if constrained:
                assert set(alone[1:].tolist()) <= set(allowed) | {pad}


def test_bank_removal_restores_the_backbone_exactly():
    model = tiny_bart(seed=0)
    x = bart_inputs()
    dec = torch.tensor([[2, 5, 6]] * 5)
    with torch.no_grad():
        before = model(**x, decoder_input_ids=dec).logits
    with_bank(model)
    with torch.no_grad(), bank_of(model).route(ROUTE):
        during = model(**x, decoder_input_ids=dec).logits
    remove_bank(model)
    with torch.no_grad():
        after = model(**x, decoder_input_ids=dec).logits
    assert torch.equal(before, after) and not torch.equal(before, during)
    assert model.config._attn_implementation == "sdpa"
    assert all(p.requires_grad for p in model.parameters())
