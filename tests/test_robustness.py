"""FGSM robustness module: gradient/sign/radius, encoder-only hooks, state restoration, sweeps and plots."""

from __future__ import annotations

import math

import pytest
import torch

from mmprompt.eval.decoding import beam_search
from mmprompt.models.ofa import OFAConfig, OFAModel
from mmprompt.robustness.attack import (
    ATTACK_SPACES,
    FGSM,
    Deltas,
    attack_batch,
    attacked,
    epsilon_sweep,
    perturbed,
    plot_sweep,
    sweep_table,
)
from mmprompt.training.losses import forward_logits, seq2seq_loss

VOCAB = 48
PAD = 1
EMBED_SPACES = ("image_embeds", "text_embeds")


def make_model(seed: int = 0) -> OFAModel:
    config = OFAConfig.from_preset("ofa-nano-small", vocab_size=VOCAB, encoder_layers=2, decoder_layers=2,
                                   patch_image_size=32, dropout=0.1)
    return OFAModel(config, seed=seed)


def make_batch(seed: int, batch_size: int = 2, src_len: int = 6, tgt_len: int = 4, pad_last: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, src_len), generator=g)
    ids[:, 0] = 0
    if pad_last:
        ids[-1, src_len - 2:] = PAD
    targets = torch.randint(3, VOCAB, (batch_size, tgt_len), generator=g)
    dec = torch.cat([torch.zeros(batch_size, 1, dtype=torch.long), targets[:, :-1]], dim=1)
    images = torch.rand(batch_size, 3, 32, 32, generator=g) * 1.8 - 0.9  # strictly inside (-1, 1)
    return dict(input_ids=ids, patch_images=images, patch_masks=torch.ones(batch_size, dtype=torch.bool),
                decoder_input_ids=dec, target_ids=targets)


@pytest.fixture(scope="module")
def model() -> OFAModel:
    return make_model().eval()


def clean_loss(model, batch, deltas=None) -> float:
    with torch.no_grad(), perturbed(model, deltas):
        return float(seq2seq_loss(forward_logits(model, batch), batch["target_ids"], pad_id=PAD))


def reference_gradient(model, batch, space: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean tensor, d loss / d tensor) computed without mmprompt.robustness.attack."""
    kw = dict(patch_images=batch["patch_images"], patch_masks=batch["patch_masks"],
              decoder_input_ids=batch["decoder_input_ids"], input_ids=batch["input_ids"])
    handle, holder = None, {}
    if space == "text_embeds":
        x = model.encoder.embed_tokens(batch["input_ids"]).detach().requires_grad_()
        kw.update(input_ids=None, inputs_embeds=x, attention_mask=batch["input_ids"].ne(PAD))
    elif space == "pixels":
        x = batch["patch_images"].clone().requires_grad_()
        kw["patch_images"] = x
    else:
        def hook(_m, _i, out):
            holder["x"] = out.detach().requires_grad_()
            return holder["x"]

        handle = model.encoder.image_proj.register_forward_hook(hook)
    try:
        loss = seq2seq_loss(model(**kw).logits, batch["target_ids"], pad_id=PAD)
    finally:
        if handle is not None:
            handle.remove()
    x = holder.get("x", x if space != "image_embeds" else None)
    (grad,) = torch.autograd.grad(loss, [x])
    return x.detach(), grad


# ------------------------------------------------------------------------------------------ FGSM maths
@pytest.mark.parametrize("space", ATTACK_SPACES)
def test_small_eps_attack_raises_loss_to_first_order(model, space):
    eps = 1e-3 if space == "pixels" else 1e-2
    for seed in (0, 1, 2):
        batch = make_batch(seed)
        base = clean_loss(model, batch)
        deltas = attack_batch(model, batch, eps, space)
        attacked_loss = clean_loss(model, batch, deltas)
        assert attacked_loss > base, f"seed {seed}"
    # first order (last seed): L(x + δ) − L(x) ≈ <∇L, δ> = Σ r·|∇L| (> 0)
    predicted = 0.0
    for s in deltas.spaces:
        _, grad = reference_gradient(model, batch, s)
        predicted += float((grad * deltas.get(s)).sum())
    assert predicted > 0
    assert attacked_loss - base == pytest.approx(predicted, rel=0.25)


@pytest.mark.parametrize("space,scale", [("text_embeds", "rms"), ("image_embeds", "rms"), ("pixels", "absolute"),
                                         ("text_embeds", "absolute"), ("pixels", "rms")])
def test_delta_has_gradient_sign_and_requested_radius(model, space, scale):
    batch = make_batch(3)
    eps = 0.05
    deltas = attack_batch(model, batch, eps, space, scale=scale)
    assert deltas.spaces == (space,)
    clean, grad = reference_gradient(model, batch, space)
    delta = deltas.get(space)
    assert delta.shape == clean.shape and not delta.requires_grad
    b = clean.shape[0]
    if scale == "rms":
        if space == "text_embeds":
            valid = batch["input_ids"].ne(PAD)[..., None].float()
            expected = ((clean**2 * valid).sum((1, 2)) / (valid.sum((1, 2)) * clean.shape[-1])).sqrt() * eps
        else:
            expected = clean.reshape(b, -1).pow(2).mean(1).sqrt() * eps
        assert float(expected.min()) > 0
    else:
        expected = torch.full((b,), eps)
    torch.testing.assert_close(deltas.radius[space], expected, rtol=1e-5, atol=0)
    flat = delta.reshape(b, -1)
    torch.testing.assert_close(flat.abs().amax(1), expected, rtol=1e-5, atol=0)
    shape = (b,) + (1,) * (clean.dim() - 1)
    strong = grad.abs() > 1e-6 * grad.abs().amax()
    assert strong.float().mean() > 0.5  # most entries carry a real gradient
    torch.testing.assert_close(delta[strong], (expected.view(shape) * grad.sign()).expand_as(delta)[strong])
    if space == "text_embeds":  # padding positions get no gradient, hence no perturbation
        assert torch.all(delta[batch["input_ids"].eq(PAD)] == 0)


def test_deltas_do_not_depend_on_the_rest_of_the_batch(model):
    batch = make_batch(4, batch_size=2, pad_last=False)
    joint = attack_batch(model, batch, 0.1, "embeds")
    for i in range(2):
        alone = attack_batch(model, {k: v[i:i + 1] for k, v in batch.items()}, 0.1, "embeds")
        for s in EMBED_SPACES:
            torch.testing.assert_close(alone.radius[s], joint.radius[s][i:i + 1])
            agree = (alone.get(s)[0].sign() == joint.get(s)[i].sign()).float().mean()
            assert agree > 0.99


def test_eps_zero_gives_zero_deltas_and_clean_outputs(model):
    batch = make_batch(5)
    for space in ATTACK_SPACES:
        deltas = attack_batch(model, batch, 0.0, space)
        assert all(torch.all(deltas.get(s) == 0) for s in deltas.spaces)
        with torch.no_grad():
            clean = forward_logits(model, batch)
            with perturbed(model, deltas):
                same = forward_logits(model, batch)
        torch.testing.assert_close(same, clean, rtol=0, atol=0)


def test_pixels_are_clamped_to_the_normalised_range(model):
    batch = make_batch(6)
    images = batch["patch_images"].clone()
    images[:, :, :8] = 1.0
    images[:, :, 8:16] = -1.0
    batch["patch_images"] = images
    deltas = attack_batch(model, batch, 0.5, "pixels")
    seen = []
    handle = model.encoder.embed_images.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad(), perturbed(model, deltas):
            model.encode(batch["input_ids"], batch["patch_images"], batch["patch_masks"])
    finally:
        handle.remove()
    (pixels,) = seen
    assert float(pixels.min()) >= -1.0 and float(pixels.max()) <= 1.0
    moved = (pixels - images).abs()
    assert float(moved.max()) == pytest.approx(0.5)
    inside = images.abs() < 0.5
    torch.testing.assert_close(moved[inside], torch.full_like(moved[inside], 0.5))  # no clamping needed there
    assert torch.all(pixels[deltas.pixels > 0] >= images[deltas.pixels > 0])


# ------------------------------------------------------------------------------------------ encoder-only hooks
def test_decoder_embeddings_are_untouched(model):
    batch = make_batch(7)
    deltas = attack_batch(model, batch, 0.5, "embeds")
    inputs = {k: batch[k] for k in ("input_ids", "patch_images", "patch_masks", "decoder_input_ids")}
    enc_in = (batch["input_ids"], batch["patch_images"], batch["patch_masks"])
    seen: list[torch.Tensor] = []
    handle = model.decoder.layernorm_embedding.register_forward_pre_hook(lambda _m, a: seen.append(a[0].clone()))
    try:
        with torch.no_grad():
            clean_enc = model.encode(*enc_in)
            clean_dec, _ = model.decode(batch["decoder_input_ids"], clean_enc, use_cache=False)
            model(**inputs)
            with perturbed(model, deltas):
                model(**inputs)
                attacked_enc = model.encode(*enc_in)
                attacked_dec, _ = model.decode(batch["decoder_input_ids"], clean_enc, use_cache=False)
    finally:
        handle.remove()
    assert len(seen) == 4
    torch.testing.assert_close(seen[1], seen[0], rtol=0, atol=0)  # decoder's token embeddings identical
    torch.testing.assert_close(seen[3], seen[0], rtol=0, atol=0)
    torch.testing.assert_close(attacked_dec, clean_dec, rtol=0, atol=0)
    assert not torch.allclose(attacked_enc.last_hidden_state, clean_enc.last_hidden_state, atol=1e-3)
    assert torch.equal(attacked_enc.padding_mask, clean_enc.padding_mask)


def test_beam_search_runs_on_attacked_inputs(model):
    batch = make_batch(8)
    deltas = attack_batch(model, batch, 1.0, "text_embeds")
    # the same attack written by hand: perturbed embeddings passed as inputs_embeds
    embeds = model.encoder.embed_tokens(batch["input_ids"]).detach() + deltas.text_embeds
    manual = dict(inputs_embeds=embeds, attention_mask=batch["input_ids"].ne(PAD).long(),
                  patch_images=batch["patch_images"], patch_masks=batch["patch_masks"])
    calls = []
    handle = model.encoder.register_forward_pre_hook(lambda _m, a, kw: calls.append(kw), with_kwargs=True)
    try:
        with torch.no_grad():
            clean = beam_search(model, batch, beam_size=3, max_len=4)
            expected = beam_search(model, manual, beam_size=3, max_len=4)
            with perturbed(model, deltas):
                hyps = beam_search(model, batch, beam_size=3, max_len=4)
    finally:
        handle.remove()
    assert len(calls) == 3  # one encoder pass each, on the B-sized batch
    assert [[h.tokens for h in s] for s in hyps] == [[h.tokens for h in s] for s in expected]
    for got, want in zip(hyps, expected):
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
    assert [h.score for s in hyps for h in s] != pytest.approx([h.score for s in clean for h in s], abs=1e-4)


def hook_counts(model) -> int:
    return sum(len(getattr(m, name)) for m in model.modules()
               for name in ("_forward_pre_hooks", "_forward_hooks", "_forward_hooks_always_called"))


def test_perturbed_removes_hooks_even_on_error(model):
    batch = make_batch(9)
    deltas = attack_batch(model, batch, 0.3, "embeds")
    deltas.pixels = torch.zeros_like(batch["patch_images"])
    before = hook_counts(model)
    with torch.no_grad():
        clean = model.encode(batch["input_ids"], batch["patch_images"]).last_hidden_state
    with pytest.raises(RuntimeError, match="boom"):
        with perturbed(model, deltas):
            assert hook_counts(model) > before
            raise RuntimeError("boom")
    assert hook_counts(model) == before
    with torch.no_grad():
        after = model.encode(batch["input_ids"], batch["patch_images"]).last_hidden_state
    torch.testing.assert_close(after, clean, rtol=0, atol=0)


def test_perturbed_rejects_deltas_of_another_batch(model):
    deltas = attack_batch(model, make_batch(10, batch_size=2), 0.1, "text_embeds")
    other = make_batch(11, batch_size=1)
    before = hook_counts(model)
    with pytest.raises(ValueError, match=r"deltas\.text_embeds is shaped"):
        with torch.no_grad(), perturbed(model, deltas):
            model.encode(other["input_ids"], other["patch_images"])
    assert hook_counts(model) == before


# ------------------------------------------------------------------------------------------ state restoration
def _prepare(kind: str) -> OFAModel:
    m = make_model(seed=1)
    if kind == "prefix":
        from mmprompt.tuning import PrefixConfig, apply_method

        apply_method(m, PrefixConfig(length=3, dropout=0.0))
    elif kind == "frozen":
        m.requires_grad_(False)
    m.train()
    m.encoder.embed_images.eval()  # a mixed pattern of training flags
    return m


@pytest.mark.parametrize("kind", ["finetune", "prefix", "frozen"])
def test_attack_leaves_model_state_exactly(kind):
    m = _prepare(kind)
    trainable = [p for p in m.parameters() if p.requires_grad]
    if trainable:
        trainable[0].grad = torch.full_like(trainable[0], 3.0)  # a pre-existing gradient stays as it was
    flags = [p.requires_grad for p in m.parameters()]
    modes = {name: mod.training for name, mod in m.named_modules()}
    state = {k: v.clone() for k, v in m.state_dict().items()}
    batch = make_batch(12)
    deltas = attack_batch(m, batch, 0.1, "embeds")
    pixel_deltas = attack_batch(m, batch, 0.1, "pixels")
    assert all(float(deltas.get(s).abs().sum()) > 0 for s in EMBED_SPACES)
    assert float(pixel_deltas.pixels.abs().sum()) > 0
    assert [p.requires_grad for p in m.parameters()] == flags
    assert {name: mod.training for name, mod in m.named_modules()} == modes
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=f"{k} changed")
    for p in m.parameters():
        if trainable and p is trainable[0]:
            assert torch.all(p.grad == 3.0)
        else:
            assert p.grad is None
    # the attack runs in eval mode: dropout in the model does not make it random
    again = attack_batch(m, batch, 0.1, "embeds")
    assert all(torch.equal(again.get(s), deltas.get(s)) for s in EMBED_SPACES)


def test_attack_works_under_no_grad_and_with_a_shallow_prompt():
    from mmprompt.tuning import ShallowPromptConfig, apply_method

    m = make_model(seed=2).eval()
    apply_method(m, ShallowPromptConfig(length=2))
    batch = make_batch(13)
    with torch.no_grad():  # evaluation code usually runs without gradients
        deltas = attack_batch(m, batch, 1e-2, "text_embeds")
    assert deltas.text_embeds.shape == (2, 6, m.config.d_model)  # the soft tokens are not attacked
    assert clean_loss(m, batch, deltas) > clean_loss(m, batch)


# ------------------------------------------------------------------------------------------ validation
def test_bad_arguments_raise_value_error_naming_the_parameter(model):
    batch = make_batch(14)
    with pytest.raises(ValueError, match=r"space='noise'"):
        attack_batch(model, batch, 0.1, "noise")
    for eps in (-0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match=r"eps="):
            attack_batch(model, batch, eps, "embeds")
    with pytest.raises(ValueError, match=r"scale="):
        attack_batch(model, batch, 0.1, "embeds", scale="relative")
    with pytest.raises(ValueError, match=r"pixel_range="):
        attack_batch(model, batch, 0.1, "pixels", pixel_range=(1.0, -1.0))
    no_image = {k: v for k, v in batch.items() if k not in ("patch_images", "patch_masks")}
    with pytest.raises(ValueError, match="patch_images"):
        attack_batch(model, no_image, 0.1, "image_embeds")
    bright = dict(batch, patch_images=batch["patch_images"] + 1.5)
    with pytest.raises(ValueError, match="pixel_range"):
        attack_batch(model, bright, 0.1, "pixels")
    assert attack_batch(model, bright, 0.1, "pixels", pixel_range=None).pixel_range is None
    with pytest.raises(ValueError, match=r"epsilon="):
        FGSM(-1.0)
    with pytest.raises(ValueError, match="deltas"):
        with perturbed(model, {"text_embeds": torch.zeros(1)}):
            pass


def test_epsilon_sweep_validates_before_evaluating():
    calls = []

    def evaluate(attack):
        calls.append(attack)
        return {"acc": 1.0}

    for kwargs, name in [(dict(epsilons=[]), "epsilons"), (dict(epsilons=[0.1, -0.2]), "epsilons"),
                         (dict(epsilons=[0.1], spaces=["noise"]), "spaces"),
                         (dict(epsilons=[0.1], spaces="embeds"), "spaces"),
                         (dict(epsilons=[0.1], scale="linf"), "scale")]:
        with pytest.raises(ValueError, match=name):
            epsilon_sweep(evaluate, progress=False, **kwargs)
    assert calls == []
    with pytest.raises(ValueError, match="evaluate returned"):
        epsilon_sweep(lambda attack: 0.5, [0.1], progress=False)


# ------------------------------------------------------------------------------------------ sweeps
def fake_evaluate(calls: list, base: float = 0.9):
    def evaluate(attack):
        calls.append(attack)
        if attack is None:
            return {"acc": base, "loss": 1.0}
        slope = 2.0 if attack.space == "pixels" else 1.0
        return {"acc": base - slope * attack.epsilon, "loss": 1.0 + attack.epsilon}

    return evaluate


def test_epsilon_sweep_with_a_fake_evaluate():
    calls: list = []
    rows = epsilon_sweep(fake_evaluate(calls), [0.1, 0.0, 0.05], ["embeds", "pixels"], method="prefix",
                         progress=False)
    assert [(r["space"], r["epsilon"]) for r in rows] == [
        ("embeds", 0.0), ("embeds", 0.05), ("embeds", 0.1), ("pixels", 0.0), ("pixels", 0.05), ("pixels", 0.1)]
    assert calls.count(None) == 1  # the clean score is computed once and is the ε = 0 row of every space
    assert rows[0] == {"method": "prefix", "space": "embeds", "epsilon": 0.0, "acc": 0.9, "loss": 1.0}
    assert rows[3] == {"method": "prefix", "space": "pixels", "epsilon": 0.0, "acc": 0.9, "loss": 1.0}
    assert rows[5]["acc"] == pytest.approx(0.7) and rows[2]["acc"] == pytest.approx(0.8)
    attacks = [a for a in calls if a is not None]
    assert [(a.space, a.epsilon) for a in attacks] == [("embeds", 0.05), ("embeds", 0.1), ("pixels", 0.05),
                                                       ("pixels", 0.1)]
    assert all(isinstance(a, FGSM) and a.scale == "auto" for a in attacks)
    no_zero = epsilon_sweep(fake_evaluate([]), [0.1], ["text_embeds"], progress=False)
    assert [r["epsilon"] for r in no_zero] == [0.0, 0.1] and "method" not in no_zero[0]
    assert [r["epsilon"] for r in epsilon_sweep(fake_evaluate([]), [0.1], include_clean=False, progress=False)] == [0.1]


def test_epsilon_sweep_on_a_real_model(model):
    batches = [make_batch(20), make_batch(21)]

    def evaluate(attack):
        total = 0.0
        for batch in batches:
            with torch.no_grad(), attacked(model, batch, attack):
                total += float(seq2seq_loss(forward_logits(model, batch), batch["target_ids"], pad_id=PAD))
        return {"loss": total / len(batches)}

    rows = epsilon_sweep(evaluate, [0.0, 0.01, 0.2], ["text_embeds", "image_embeds"], progress=False)
    clean = sum(clean_loss(model, b) for b in batches) / 2
    by_key = {(r["space"], r["epsilon"]): r["loss"] for r in rows}
    for space in ("text_embeds", "image_embeds"):
        assert by_key[(space, 0.0)] == pytest.approx(clean, abs=1e-6)
        assert clean < by_key[(space, 0.01)] < by_key[(space, 0.2)]


def test_sweep_table_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (epsilon_sweep(fake_evaluate([]), [0.1, 0.2], ["embeds", "pixels"], method="prefix", progress=False)
            + epsilon_sweep(fake_evaluate([], base=0.95), [0.1, 0.2], ["embeds", "pixels"], method="finetune",
                            progress=False))
    table = sweep_table(rows)
    assert set(table.columns) == {"method", "space", "epsilon", "metric", "value", "clean", "drop"}
    assert len(table) == len(rows) * 2
    pick = table[(table.method == "finetune") & (table.space == "pixels") & (table.epsilon == 0.2)
                 & (table.metric == "acc")]
    assert float(pick["value"].iloc[0]) == pytest.approx(0.55)
    assert float(pick["clean"].iloc[0]) == pytest.approx(0.95)
    assert float(pick["drop"].iloc[0]) == pytest.approx(0.4)
    assert table[table.epsilon == 0.0]["drop"].abs().max() == 0
    with pytest.raises(ValueError, match="metrics"):
        sweep_table(rows, ["bleu"])
    with pytest.raises(ValueError, match="rows"):
        sweep_table([])

    ax = plot_sweep(rows, "acc")
    curves = sorted(tuple(round(float(y), 6) for y in line.get_ydata()) for line in ax.lines if len(line.get_ydata()))
    expected = sorted([(0.9, 0.8, 0.7), (0.9, 0.7, 0.5), (0.95, 0.85, 0.75), (0.95, 0.75, 0.55)])
    assert [c for c in curves if len(c) == 3] == expected
    assert ax.get_ylabel() == "acc"
    plt.close(ax.figure)


def test_deltas_container():
    d = Deltas(text_embeds=torch.ones(2, 3, 4), pixels=torch.zeros(2, 3, 8, 8), epsilon=0.1)
    assert d.spaces == ("text_embeds", "pixels") and d.batch_size == 2
    assert d.to("cpu").text_embeds.shape == (2, 3, 4)
    assert Deltas().spaces == () and Deltas().batch_size == 0
    assert math.isclose(FGSM(0.1, "pixels").epsilon, 0.1)
