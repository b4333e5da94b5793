import pytest
import torch

from mmprompt.data import tasks as T
from mmprompt.data.tokenizer import BOS, EOS, PAD, decode_ids, encode_text


def test_instructions_are_ofas():
    assert T.caption_source() == " what does the image describe?"
    assert T.refcoco_source("The Red circle") == ' which region does the text " the red circle " describe?'
    assert T.snli_ve_source("A dog runs") == ' does the image describe " a dog runs "?'
    assert T.snli_ve_source("a dog runs", "Two dogs.") == ' can image and text1 " two dogs. " imply text2 " a dog runs "?'
    assert T.vqa_source("What color is it") == " what color is it?"
    assert T.vqa_source("what?", ["circle", "star"]) == " what? object: circle star"


def test_cleaning_like_ofa():
    assert T.pre_caption(",.The  man-in/black <person>  ") == "the man in black person"
    assert T.pre_caption("a b c d e", max_words=3) == "a b c"
    assert T.pre_question("?What   is it?") == "what is it?"
    assert T.clean_caption_target("A man, riding; a horse!", max_words=3) == "A man riding"


def test_normalize_answer():
    assert T.normalize_answer(" Two ") == "2"
    assert T.normalize_answer("The Red.") == "red"
    assert T.normalize_answer("3.5") == "3.5"
    assert T.normalize_answer("yes!") == "yes"


def test_vqa_confidences_and_answer_list_are_inverse():
    answers = ["red"] * 6 + ["orange"] * 3 + ["pink"]
    confs = {"red": 1.0, "orange": T.vqa_confidence(3), "pink": T.vqa_confidence(1)}
    assert confs == {"red": 1.0, "orange": 0.9, "pink": 0.3}
    rebuilt = T.vqa_answer_list(confs)
    assert sorted(rebuilt) == sorted(answers)
    assert T.vqa_target_answer(confs) == "red"
    assert T.vqa_target_answer({"a": 0.6, "b": 0.6}) == "a"
    assert T.vqa_answer_list({"x": 0.3}) == ["x"] + [""] * 9


def test_fill_box_placeholders():
    text = "small red circle [[0,0,64,128]] large star [[64,64,128,128]]"
    assert T.fill_box_placeholders(text, 128, 3) == (
        "small red circle <bin_0> <bin_0> <bin_1> <bin_2> large star <bin_1> <bin_1> <bin_2> <bin_2>"
    )


def test_trie_next_tokens():
    trie = T.Trie([[5, 6], [5, 7, 8], [9]])
    assert len(trie) == 3
    assert trie.next_tokens([BOS]) == [5, 9]
    assert trie.next_tokens([BOS, 5]) == [6, 7]
    assert trie.next_tokens([BOS, 5, 6]) == [EOS]
    assert trie.next_tokens([BOS, 5, 7]) == [8]
    assert trie.next_tokens([BOS, 4]) == [EOS]  # unknown prefix
    assert [5, 7, 8] in trie and [5, 7] not in trie


def test_constraint_mask_positions():
    trie = T.Trie([[5, 6], [5, 7, 8], [9]])
    labels = [PAD, PAD, 5, 7, 8, EOS]  # prev_output layout: two copied-source positions without loss
    mask = T.constraint_mask(trie, labels, prompt_length=3, vocab_size=12)
    assert mask.shape == (6, 12) and mask.dtype == torch.bool
    assert mask[0].all() and mask[1].all()
    assert mask[2].nonzero().flatten().tolist() == [5, 9]
    assert mask[3].nonzero().flatten().tolist() == [6, 7]
    assert mask[4].nonzero().flatten().tolist() == [8]
    assert mask[5].nonzero().flatten().tolist() == [EOS]
    # every label is allowed at its own position
    assert all(mask[i, t] for i, t in enumerate(labels))


def test_encode_pair_layouts(nano_tokenizer):
    tok = nano_tokenizer
    src, tgt = T.snli_ve_source("there is a red circle"), " yes"
    none = T.encode_pair(tok, src, tgt, "none")
    ans = encode_text(tok, tgt)
    assert none.source[0] == BOS and none.source[-1] == EOS
    assert none.decoder_input == [BOS, *ans] and none.labels == [*ans, EOS] and none.prompt_length == 1
    prev = T.encode_pair(tok, src, tgt, "prev_output")
    assert prev.decoder_input == none.source[:-1] + ans
    assert len(prev.labels) == len(prev.decoder_input)
    n_pad = len(none.source) - 2
    assert prev.labels[:n_pad] == [PAD] * n_pad and prev.labels[n_pad:] == [*ans, EOS]
    assert prev.prompt_length == len(none.source) - 1
    assert decode_ids(tok, prev.decoder_input[: prev.prompt_length]) == src
    with pytest.raises(ValueError, match="prompt_type"):
        T.encode_pair(tok, src, tgt, "src")


def test_trie_over_answers_constrains_ve(nano_tokenizer):
    tok = nano_tokenizer
    trie = T.build_trie(tok, T.VE_ANSWERS)
    first = trie.next_tokens([BOS])
    assert sorted(first) == sorted(T.answer_ids(tok, a)[0] for a in T.VE_ANSWERS)
    for a in T.VE_ANSWERS:
        assert T.answer_ids(tok, a) in trie


def test_every_task_keyed_table_covers_exactly_the_registered_tasks():
    """The task registry (data.tasks.TASK_SPECS) is the one list of tasks; every per-task table elsewhere —
    how a task is read, prompted, predicted, scored and given a gpu recipe — is keyed by exactly those names."""
    from mmprompt.data.tasks import DEFAULT_PROMPT_TYPE, TASK_SPECS, TASKS
    from mmprompt.data.tsv import LAYOUTS
    from mmprompt.eval.evaluation import MAIN_METRIC, PREDICTORS
    from mmprompt.experiment.profiles import GPU_TASK_DEFAULTS, SPLITS

    assert TASKS == tuple(TASK_SPECS) and len(set(TASKS)) == len(TASKS)
    for table in (DEFAULT_PROMPT_TYPE, PREDICTORS, MAIN_METRIC, GPU_TASK_DEFAULTS, SPLITS):
        assert set(table) == set(TASKS), sorted(table)
    assert set(TASKS) <= set(LAYOUTS)  # plus the pretraining layout
    assert all(SPLITS[t] == (s.val_split, s.test_splits) and MAIN_METRIC[t] == s.metric for t, s in TASK_SPECS.items())
