"""Greedy, beam search, constraints, all-candidate scoring and REC decoding."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mmprompt.eval.decoding import beam_search, generate, greedy_search, predict_boxes, score_candidates
from mmprompt.models.ofa.testing import make_batch, tiny_model
from mmprompt.core.injection import attach, detach


pytestmark = pytest.mark.usefixtures("one_thread")


BOS, PAD, EOS, A, B, C = range(6)


class MarkovToy:
    """Next-token distribution depends only on the last token: ``probs[last]`` (a V×V table)."""

    encoder_input_names = ("input_ids",)

    def __init__(self, probs: torch.Tensor) -> None:
        self.logits = probs.clamp_min(1e-12).log()
        self.steps = 0

    def encode(self, input_ids):
        return input_ids.shape[0]

    def decode(self, ids, enc, past=None, use_cache=True):
        self.steps += 1
        return self.logits[ids], (past or 0) + ids.shape[1]

    def reorder_cache(self, past, index):
        return past

    def reorder_encoder_outputs(self, enc, index):
        return len(index)


def _table(rows: dict[int, dict[int, float]], vocab: int = 6) -> torch.Tensor:
    t = torch.full((vocab, vocab), 1e-9)
    for src, dist in rows.items():
        for dst, p in dist.items():
            t[src, dst] = p
    return t


def _toy_batch(n=1):
    return {"input_ids": torch.zeros(n, 3, dtype=torch.long)}


# --------------------------------------------------------------------------------------- toy model
def test_beam_finds_the_best_sequence_greedy_misses():
    # greedy: A (0.55), then C (0.36), eos → 0.198; best: B (0.45), eos (0.95) → 0.4275
    toy = MarkovToy(_table({BOS: {A: 0.55, B: 0.45}, A: {EOS: 0.3, C: 0.36, B: 0.34}, B: {EOS: 0.95, C: 0.05},
                            C: {EOS: 1.0}}))
    greedy = greedy_search(toy, _toy_batch(), max_len=5, length_penalty=0.0)[0]
    beam = beam_search(toy, _toy_batch(), beam_size=2, max_len=5, length_penalty=0.0)[0]
    assert greedy.tokens == [A, C]
    assert beam[0].tokens == [B]
    assert beam[0].log_prob == pytest.approx(math.log(0.45 * 0.95), abs=1e-6)
    assert beam[0].score >= beam[1].score


def test_beam_search_is_exact_when_wide_enough():
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 6, generator=gen)
    probs[:, [BOS, PAD]] = 0
    probs = probs / probs.sum(-1, keepdim=True)
    toy = MarkovToy(probs)
    hyps = beam_search(toy, _toy_batch(), beam_size=9, min_len=3, max_len=3, n_best=5, length_penalty=1.0)[0]
    logp = toy.logits.double()
    brute = []
    for seq in itertools.product([A, B, C], repeat=3):
        path = (BOS,) + seq + (EOS,)
        brute.append((sum(logp[a, b].item() for a, b in zip(path, path[1:])), list(seq)))
    brute.sort(reverse=True)
    assert [h.tokens for h in hyps] == [s for _, s in brute[:5]]
    assert [h.log_prob for h in hyps] == pytest.approx([lp for lp, _ in brute[:5]], abs=1e-6)
    assert hyps[0].score == pytest.approx(brute[0][0] / 4)  # 3 tokens + eos, length penalty 1


def test_min_and_max_length():
    toy = MarkovToy(_table({BOS: {EOS: 0.9, A: 0.1}, A: {EOS: 0.9, A: 0.1}}))
    assert greedy_search(toy, _toy_batch(), max_len=5, min_len=0)[0].tokens == []
    assert greedy_search(toy, _toy_batch(), max_len=5, min_len=2)[0].tokens == [A, A]
    toy = MarkovToy(_table({BOS: {A: 1.0}, A: {A: 1.0}}))
    hyp = beam_search(toy, _toy_batch(), beam_size=3, max_len=4)[0][0]
    assert hyp.tokens == [A] * 4 and hyp.finished  # eos forced after max_len tokens


def test_no_repeat_ngram():
    toy = MarkovToy(_table({BOS: {A: 0.9, B: 0.1}, A: {A: 0.8, B: 0.15, EOS: 0.05}, B: {A: 0.6, B: 0.3, EOS: 0.1}}))
    plain = greedy_search(toy, _toy_batch(), min_len=6, max_len=6)[0].tokens
    banned = greedy_search(toy, _toy_batch(), min_len=6, max_len=6, no_repeat_ngram_size=2)[0].tokens
    assert plain == [A] * 6
    seq = [BOS] + banned
    bigrams = list(zip(seq, seq[1:]))
    assert len(bigrams) == len(set(bigrams))


def test_bad_search_parameters():
    toy = MarkovToy(_table({BOS: {A: 1.0}}))
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(toy, _toy_batch(), beam_size=0)
    with pytest.raises(ValueError, match="min_len"):
        greedy_search(toy, _toy_batch(), min_len=5, max_len=3)
    with pytest.raises(ValueError, match="encoder inputs"):
        greedy_search(toy, {"pixel_values": torch.zeros(1)})


# --------------------------------------------------------------------------------------- OFA nano
@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=40, seed=0)


@pytest.fixture(scope="module")
def batch(model):
    b = make_batch(model.config, (7, 4, 6), image_size=32, seed=1)
    return {k: v for k, v in b.items() if k != "decoder_input_ids"}


class Trie:
    """Allowed next tokens after a prefix that starts with bos (OFA's convention)."""

    def __init__(self, answers):
        self.answers = [[BOS] + list(a) for a in answers]

    def allowed(self, prefix):
        n = len(prefix)
        return sorted({a[n] for a in self.answers if len(a) > n and a[:n] == list(prefix)})


def test_greedy_equals_beam_of_one(model, batch):
    greedy = greedy_search(model, batch, max_len=6)
    beam = beam_search(model, batch, beam_size=1, max_len=6)
    for g, (b,) in zip(greedy, beam):
        assert g.tokens == b.tokens
        assert g.log_prob == pytest.approx(b.log_prob, abs=1e-5)


def test_padded_batch_decodes_like_single_samples(model, batch):
    together = generate(model, batch, beam_size=3, max_len=5)
    for i, n in enumerate((7, 4, 6)):
        alone = {"input_ids": batch["input_ids"][i:i + 1, :n], "patch_images": batch["patch_images"][i:i + 1],
                 "patch_masks": batch["patch_masks"][i:i + 1]}
        single = generate(model, alone, beam_size=3, max_len=5)[0]
        assert single.tokens == together[i].tokens
        assert single.score == pytest.approx(together[i].score, abs=1e-5)


def test_constrained_decoding_emits_only_allowed_answers(model, batch):
    answers = [[5, 6, EOS], [5, 7, 8, EOS], [9, EOS]]
    trie = Trie(answers)
    for hyps in (greedy_search(model, batch, max_len=6, constraint=trie),
                 [h[0] for h in beam_search(model, batch, beam_size=3, max_len=6, constraint=trie)]):
        for h in hyps:
            assert h.tokens + [EOS] in answers
    per_sample = [Trie([[9, EOS]]), trie, Trie([[5, 6, EOS]])]
    hyps = generate(model, batch, beam_size=2, max_len=6, constraint=per_sample)
    assert hyps[0].tokens == [9] and hyps[2].tokens == [5, 6]


def _manual_scores(model, batch, candidates, trie=None, prompts=None):
    out = torch.zeros(batch["input_ids"].shape[0], len(candidates), dtype=torch.float64)
    with torch.no_grad():
        for i in range(out.shape[0]):
            sample = {k: v[i:i + 1] for k, v in batch.items()}
            prompt = prompts[i] if prompts else [BOS]
            for j, cand in enumerate(candidates):
                dec = torch.tensor([prompt + cand[:-1]])
                logits = model(**sample, decoder_input_ids=dec).logits[0, len(prompt) - 1:]
                if trie is not None:
                    mask = torch.full_like(logits, float("-inf"))
                    for t in range(len(cand)):
                        mask[t, trie.allowed([BOS] + cand[:t])] = 0
                    logits = logits + mask
                lp = F.log_softmax(logits, -1)
                out[i, j] = sum(lp[t, tok].item() for t, tok in enumerate(cand))
    return out


def test_all_candidate_scoring_equals_teacher_forced_sum(model, batch):
    candidates = [[5, 6, EOS], [7, EOS], [9, 10, 11, EOS], [12, EOS], [5, 7, 8, EOS]]
    got = score_candidates(model, batch, candidates, chunk_size=2)
    assert got.shape == (3, 5)
    assert torch.allclose(got, _manual_scores(model, batch, candidates), atol=1e-4)
    trie = Trie(candidates)
    constrained = score_candidates(model, batch, candidates, chunk_size=3, constraint=trie)
    assert torch.allclose(constrained, _manual_scores(model, batch, candidates, trie), atol=1e-4)
    assert (constrained > got).all()  # renormalised over fewer tokens


def test_candidate_scoring_with_decoder_prompts_and_the_data_trie(model, batch):
    from mmprompt.data.tasks import Trie as DataTrie

    candidates = [[5, 6, EOS], [7, EOS], [5, 8, EOS]]
    prompts = [[BOS, 11, 12], [BOS], [BOS, 13, 14, 15, 16]]  # prev_output layout: bos + source tokens
    got = score_candidates(model, batch, candidates, chunk_size=2, decoder_prompts=prompts)
    assert torch.allclose(got, _manual_scores(model, batch, candidates, prompts=prompts), atol=1e-4)
    data_trie = DataTrie([c[:-1] for c in candidates])  # stores [bos] + ids + [eos]; has next_tokens()
    constrained = score_candidates(model, batch, candidates, constraint=data_trie, decoder_prompts=prompts)
    want = _manual_scores(model, batch, candidates, Trie(candidates), prompts)
    assert torch.allclose(constrained, want, atol=1e-4)
    with pytest.raises(ValueError, match="decoder_prompts"):
        score_candidates(model, batch, candidates, decoder_prompts=prompts[:2])


def test_rec_decodes_exactly_four_bin_tokens(model, batch):
    bins = list(range(20, 40))
    boxes = predict_boxes(model, batch, lambda toks: tuple(t - 20 for t in toks), beam_size=3, bin_token_ids=bins)
    assert len(boxes) == 3
    for box in boxes:
        assert len(box) == 4 and all(0 <= v < 20 for v in box)
    free = beam_search(model, batch, beam_size=3, min_len=4, max_len=4)
    assert all(len(h[0].tokens) == 4 and EOS not in h[0].tokens for h in free)


def test_decoder_prefix_follows_beam_expansion(model, batch):
    heads = model.config.decoder_attention_heads
    pk = torch.randn(1, heads, 3, model.config.d_model // heads)
    site = model.get_submodule("decoder.layers.1.self_attn")
    plain = generate(model, batch, beam_size=3, max_len=5)
    attach(site, lambda n: (pk, pk.flip(2)))
    try:
        greedy = greedy_search(model, batch, max_len=5)
        beam1 = beam_search(model, batch, beam_size=1, max_len=5)
        beam3 = generate(model, batch, beam_size=3, max_len=5)
    finally:
        detach(site)
    assert [g.tokens for g in greedy] == [b[0].tokens for b in beam1]
    assert [h.score for h in beam3] != [h.score for h in plain]
