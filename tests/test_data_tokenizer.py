import json

import pytest
from tokenizers import pre_tokenizers

from mmprompt.data.tokenizer import (
    BOS,
    EOS,
    PAD,
    UNK,
    bin_token_ids,
    build_ofa_tokenizer,
    decode_ids,
    encode_text,
    id_to_bin,
    load_tokenizer,
    num_bins_of,
    train_nano_tokenizer,
)

CORPUS = [
    " what does the image describe?",
    " a small red circle and a large blue square",
    ' which region does the text " the red circle " describe?',
    " how many stars are there?",
] * 20


def test_nano_layout_and_determinism(tmp_path):
    a = train_nano_tokenizer(CORPUS, num_bins=16, vocab_size=400, out_dir=tmp_path / "a")
    train_nano_tokenizer(CORPUS, num_bins=16, vocab_size=400, out_dir=tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert [a.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [BOS, PAD, EOS, UNK]
    assert (a.bos_token_id, a.pad_token_id, a.eos_token_id) == (0, 1, 2)
    mask = a.convert_tokens_to_ids("<mask>")
    bins = bin_token_ids(a)
    assert len(bins) == num_bins_of(a) == 16
    assert bins == list(range(mask + 1, mask + 17))  # <mask>, then the bins in order
    assert len(a) == mask + 17
    assert id_to_bin(a, bins[5]) == 5 and id_to_bin(a, mask) is None
    assert max(a.get_vocab()[w] for w in ("Ġred", "Ġcircle")) < mask  # BPE tokens come before <mask>


def test_nano_round_trip_and_reload(tmp_path):
    tok = train_nano_tokenizer(CORPUS, num_bins=64, vocab_size=400, out_dir=tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    for text in [
        " a small red circle and a large blue square",
        " red circle <bin_3> <bin_10> <bin_20> <bin_63> blue square <bin_0> <bin_1> <bin_2> <bin_3>",
        ' what is the complete text of " a red <mask> and a star "?',
        " an unseen word: zebra!",
    ]:
        ids = encode_text(tok, text)
        assert UNK not in ids
        assert ids == encode_text(again, text)
        assert decode_ids(again, ids) == text
    ids = encode_text(tok, "<bin_3> <bin_10>")
    assert ids == [bin_token_ids(tok)[3], bin_token_ids(tok)[10]]
    assert decode_ids(tok, [BOS, *ids, EOS, PAD]) == "<bin_3> <bin_10>"
    with pytest.raises(ValueError, match="bin_64"):
        encode_text(tok, " x <bin_64>")


def test_nano_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_bins"):
        train_nano_tokenizer(CORPUS, num_bins=1)
    with pytest.raises(ValueError, match="vocab_size"):
        train_nano_tokenizer(CORPUS, vocab_size=10)
    with pytest.raises(ValueError, match="texts"):
        train_nano_tokenizer([])
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_tokenizer(tmp_path)


def _tiny_bart_files(d, with_mask=True):
    """A miniature BART vocab.json/merges.txt: specials, the 256 byte symbols, a few merges, <mask> last."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(ch, len(vocab))
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("c", "a"), ("ca", "t"), ("Ġ", "cat")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    if with_mask:
        vocab["<mask>"] = len(vocab)
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab


def test_ofa_tokenizer_order(tmp_path):
    vocab = _tiny_bart_files(tmp_path / "bpe")
    V = len(vocab)
    tok = build_ofa_tokenizer(tmp_path / "bpe", out_dir=tmp_path / "ofa")
    assert len(tok) == V + 8192 + 1000  # the real vocabulary (50,265) gives 59,457
    assert tok.convert_tokens_to_ids("<mask>") == V - 1
    assert tok.convert_tokens_to_ids("<code_0>") == V
    assert tok.convert_tokens_to_ids("<code_8191>") == V + 8191
    assert tok.convert_tokens_to_ids("<bin_0>") == V + 8192
    assert tok.convert_tokens_to_ids("<bin_999>") == V + 9191
    assert bin_token_ids(tok) == list(range(V + 8192, V + 9192))
    ids = encode_text(tok, " the cat")
    assert ids == [vocab["Ġthe"], vocab["Ġcat"]]
    text = " the cat sat <bin_5> <bin_999> <code_7>"
    reloaded = load_tokenizer(tmp_path / "ofa")
    assert decode_ids(reloaded, encode_text(reloaded, text)) == text
    assert encode_text(reloaded, text) == encode_text(tok, text)


def test_ofa_tokenizer_appends_missing_mask(tmp_path):
    vocab = _tiny_bart_files(tmp_path / "bpe", with_mask=False)
    tok = build_ofa_tokenizer(tmp_path / "bpe")
    assert tok.convert_tokens_to_ids("<mask>") == len(vocab)
    assert tok.convert_tokens_to_ids("<code_0>") == len(vocab) + 1


def test_ofa_tokenizer_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        build_ofa_tokenizer(tmp_path)
    d = tmp_path / "bad"
    vocab = _tiny_bart_files(d)
    vocab["<pad>"], vocab["<s>"] = 0, 1
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ValueError, match="<s>"):
        build_ofa_tokenizer(d)


def test_directories_load_in_transformers_with_identical_ids(tmp_path):
    """OFATokenizer and transformers' fast tokenizer read the same directory to the same ids and texts."""
    from transformers import PreTrainedTokenizerFast

    from mmprompt.experiment.backbones import checkpoints_dir
    from mmprompt.data.synth import tokenizer_corpus

    train_nano_tokenizer(CORPUS, num_bins=16, vocab_size=400, out_dir=tmp_path / "saved")
    texts = tokenizer_corpus(n_scenes=20) + [" zebra! <bin_3> <bin_10> <mask> émigré", "   ", ""]
    for d in (tmp_path / "saved", checkpoints_dir() / "ofa-nano"):
        ours, hf = load_tokenizer(d), PreTrainedTokenizerFast.from_pretrained(str(d))
        assert len(ours) == len(hf) and ours.get_vocab() == hf.get_vocab()
        assert [ours.convert_tokens_to_ids(t) for t in ("<s>", "<mask>", "<bin_1>", "<nope>")] == [
            hf.convert_tokens_to_ids(t) for t in ("<s>", "<mask>", "<bin_1>", "<nope>")]
        for text in texts:
            ids = encode_text(ours, text)
            assert ids == encode_text(hf, text), text
            assert decode_ids(ours, ids) == decode_ids(hf, ids)
            assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
            assert ours.decode([BOS, *ids, EOS]) == hf.decode([BOS, *ids, EOS], clean_up_tokenization_spaces=False)


def test_loading_a_checkpoint_does_not_import_transformers():
    import subprocess
    import sys

    code = ("import sys, mmprompt; b = mmprompt.load_model('ofa-nano-small'); "
            "print(len(b.tokenizer), 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 100 and out[1] == "False"
