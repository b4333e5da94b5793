"""Answering a batch whose rows belong to different tasks in ONE decoding call.

A prompt bank (:mod:`mmprompt.tuning.bank`) routes each row to its task's prompt; this module gives each
row its task's answer space as a per-row constraint of one beam search (:mod:`mmprompt.eval.decoding`):

* ``refcoco``: exactly four ``<bin_i>`` tokens, then eos → a box;
* ``snli_ve`` / ``vqa``: the row's decoder prompt (OFA's ``prev_output`` layout: the source tokens) is
  forced token by token, then the answer trie → one of the candidate answers (trie-constrained
  generation, OFA's "beam-search" VQA mode, rather than the all-candidate scoring of ``evaluate``);
* ``caption``: free text up to ``caption_max_len`` tokens.

Rows of every task share the encoder pass and every decoder step; a short answer's row simply ends
early.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from mmprompt.data import bin_token_ids, bins_to_box, decode_ids, encode_text, id_to_bin
from mmprompt.eval.decoding import SpecialTokens, beam_search

TASKS_ANSWERED: tuple[str, ...] = ("refcoco", "snli_ve", "caption", "vqa")


def _forced(batch: Mapping[str, Any], i: int) -> list[int]:
    """The decoder prompt of row ``i`` after the start token (empty for tasks without one)."""
    n = int(batch["decoder_prompt_lengths"][i])
    return batch["decoder_input_ids"][i, 1:n].tolist()


def _box_rule(bins: list[int], eos: int) -> Callable[[list[int]], Sequence[int]]:
    return lambda prefix: bins if len(prefix) - 1 < 4 else [eos]


def _answer_rule(forced: list[int], trie, start: int) -> Callable[[list[int]], Sequence[int]]:
    def allowed(prefix: list[int]) -> Sequence[int]:
        generated = prefix[1:]
        if len(generated) < len(forced):
            return [forced[len(generated)]]
        return trie.next_tokens([start] + generated[len(forced):])

    return allowed


def _free_rule(vocab: int, max_len: int, eos: int) -> Callable[[list[int]], Sequence[int]]:
    everything = list(range(vocab))
    return lambda prefix: everything if len(prefix) - 1 < max_len else [eos]


def row_constraints(batch: Mapping[str, Any], datasets: Mapping[str, Any], vocab: int, caption_max_len: int = 16,
                    special: SpecialTokens = SpecialTokens()) -> list[Callable[[list[int]], Sequence[int]]]:
    """One constraint per row of a mixed batch (``batch["tasks"]``), each its task's answer space."""
    tasks = batch["tasks"]
    missing = sorted({t for t in tasks if t not in datasets})
    if missing:
        raise ValueError(f"the batch has rows of {missing}, but datasets holds only {sorted(datasets)}")
    bad = sorted({t for t in tasks if t not in TASKS_ANSWERED})
    if bad:
        raise ValueError(f"tasks {bad}: allowed {TASKS_ANSWERED}")
    rules = []
    for i, task in enumerate(tasks):
        ds = datasets[task]
        if task == "refcoco":
            rules.append(_box_rule(bin_token_ids(ds.tokenizer), special.eos))
        elif task == "caption":
            rules.append(_free_rule(vocab, caption_max_len, special.eos))
        else:
            rules.append(_answer_rule(_forced(batch, i), ds.trie, special.start))
    return rules


def _longest_answer(ds) -> int:
    return max(len(encode_text(ds.tokenizer, " " + a)) for a in ds.candidates)


@torch.no_grad()
def answer_mixed(model, batch: Mapping[str, Any], datasets: Mapping[str, Any], *, beam_size: int = 5,
                 caption_max_len: int = 16, special: SpecialTokens = SpecialTokens()) -> list[Any]:
    """Each row's answer (refcoco: a box or None, snli_ve / vqa: an answer string, caption: text) from one
    beam search over the whole mixed batch (collated by :func:`mmprompt.data.collate_mixed`).

    ``datasets``: task → its ``TaskDataset`` (tokenizer, answer candidates and trie). Route the rows to
    their prompts first (``with bank.route(batch["tasks"])``)."""
    vocab = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
    if vocab is None:
        raise ValueError(f"{type(model).__name__} has no get_input_embeddings(); cannot size the vocabulary")
    rules = row_constraints(batch, datasets, vocab, caption_max_len, special)
    tasks = batch["tasks"]
    lengths = [caption_max_len, 4] + [len(_forced(batch, i)) + _longest_answer(datasets[t])
                                      for i, t in enumerate(tasks) if t in ("snli_ve", "vqa")]
    hyps = beam_search(model, batch, beam_size=beam_size, max_len=max(lengths), min_len=1, constraint=rules,
                       n_best=1, special=special)
    return [_read(task, h[0].tokens, datasets[task], len(_forced(batch, i)) if task in ("snli_ve", "vqa") else 0)
            for i, (task, h) in enumerate(zip(tasks, hyps))]


def _read(task: str, tokens: list[int], ds, n_forced: int) -> Any:
    if task == "refcoco":
        bins = [id_to_bin(ds.tokenizer, t) for t in tokens[:4]]
        return None if len(bins) != 4 or None in bins else bins_to_box(bins, ds.patch_image_size, ds.num_bins)
    return decode_ids(ds.tokenizer, tokens[n_forced:]).strip()
