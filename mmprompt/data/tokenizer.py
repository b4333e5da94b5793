"""Tokenizers with OFA's id layout, saved as transformers fast-tokenizer directories.

Both tokenizers are byte-level BPE (GPT-2/BART style: a word's leading space belongs to its token, so OFA's
texts start with a space) followed by extra tokens, in OFA's order:

* nano (:func:`train_nano_tokenizer`): ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, the BPE tokens trained
  on the synthetic corpus, ``<mask>``, then ``num_bins`` ``<bin_i>`` tokens (no image codes).
* real OFA (:func:`build_ofa_tokenizer`): BART's ``vocab.json``/``merges.txt`` (50,265 entries with ``<mask>``
  last), then 8,192 ``<code_i>`` and 1,000 ``<bin_i>`` tokens: 59,457 in all.

Encode and decode through :func:`encode_text` / :func:`decode_ids`: they map ``<bin_i>``, ``<code_i>`` and
``<mask>`` written in a text straight to their ids (like OFA's ``use_bpe=False`` path) and BPE-encode the
words between them, so both tokenizers give identical layouts.

:class:`OFATokenizer` wraps a ``tokenizers.Tokenizer`` with the few transformers-style methods mmprompt uses,
so loading a checkpoint never imports transformers (it costs most of a second); its directories load with
``transformers.PreTrainedTokenizerFast.from_pretrained`` as well, with identical ids.
"""

from __future__ import annotations

import json
import logging
import os
import re
import weakref
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from mmprompt.core.atomic import atomic_dir, write_json

logger = logging.getLogger(__name__)

BOS, PAD, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"
OFA_NUM_CODES = 8192
OFA_NUM_BINS = 1000
EXTRA_RE = re.compile(r"(<bin_\d+>|<code_\d+>|<mask>)")


class OFATokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` with OFA's special ids (``<s>``=0 ``<pad>``=1 ``</s>``=2
    ``<unk>``=3), offering the transformers-tokenizer methods mmprompt needs."""

    bos_token_id, pad_token_id, eos_token_id, unk_token_id = BOS, PAD, EOS, UNK

    def __init__(self, backend: Tokenizer) -> None:
        self.backend = backend
        got = [backend.token_to_id(s) for s in SPECIALS]
        if got != [BOS, PAD, EOS, UNK]:
            raise ValueError(
                f"tokenizer special ids {dict(zip(SPECIALS, got))}: expected <s>=0 <pad>=1 </s>=2 <unk>=3"
            )

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, token: str) -> int:
        """The id of ``token``; ``<unk>``'s id when the vocabulary lacks it (as transformers does)."""
        tid = self.backend.token_to_id(token)
        return UNK if tid is None else tid

    def convert_ids_to_tokens(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without bos/eos (use :func:`encode_text` for texts with ``<bin_i>`` tokens)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` and a ``tokenizer_config.json`` naming the special tokens."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"))
        write_json(out / "tokenizer_config.json", _TOKENIZER_CONFIG)
        return out


#: What transformers needs to load an :class:`OFATokenizer` directory as a fast tokenizer.
_TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "mask_token": MASK,
}


def _extra_tokens(prefix: str, n: int) -> list[AddedToken]:
    return [AddedToken(f"<{prefix}_{i}>", special=False, normalized=False, single_word=False) for i in range(n)]


def _save_atomic(tokenizer: OFATokenizer, out_dir: str | os.PathLike) -> Path:
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def train_nano_tokenizer(
    texts: Iterable[str], num_bins: int = 64, vocab_size: int = 1000, out_dir: str | os.PathLike | None = None
) -> OFATokenizer:
    """Train the nano byte-level BPE on ``texts`` (deterministic) and optionally save it to ``out_dir``.

    ``vocab_size`` counts the 4 specials and the BPE tokens (the trainer may stop earlier on a small corpus);
    ``<mask>`` and the ``num_bins`` bin tokens come after.
    """
    if not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins={num_bins!r}: must be an int >= 2")
    if not isinstance(vocab_size, int) or vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size!r}: must be an int >= 300 (256 bytes + specials + merges)")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("texts: need at least one non-empty text to train on")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([AddedToken(MASK, special=True, normalized=False)])
    tok.add_tokens(_extra_tokens("bin", num_bins))
    ofa = OFATokenizer(tok)
    if out_dir is not None:
        _save_atomic(ofa, out_dir)
    return ofa


def build_ofa_tokenizer(bpe_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> OFATokenizer:
    """OFA's tokenizer from a directory holding BART's ``vocab.json`` and ``merges.txt``.

    The vocabulary must give ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3; ``<mask>`` is appended when
    absent. 8,192 ``<code_i>`` then 1,000 ``<bin_i>`` follow in order.
    """
    d = Path(bpe_dir)
    vocab_file, merges_file = d / "vocab.json", d / "merges.txt"
    for f in (vocab_file, merges_file):
        if not f.is_file():
            raise FileNotFoundError(f"bpe_dir={str(d)!r}: missing {f.name} (need vocab.json and merges.txt)")
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    for i, s in enumerate(SPECIALS):
        if vocab.get(s) != i:
            raise ValueError(f"bpe_dir={str(d)!r}: vocab.json must map {s!r} to {i}, found {vocab.get(s)!r}")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"bpe_dir={str(d)!r}: vocab.json ids must be contiguous 0..{len(vocab) - 1}")
    tok = Tokenizer(models.BPE.from_file(str(vocab_file), str(merges_file), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.add_special_tokens([AddedToken(MASK, special=True, normalized=False)])
    tok.add_tokens(_extra_tokens("code", OFA_NUM_CODES))
    tok.add_tokens(_extra_tokens("bin", OFA_NUM_BINS))
    ofa = OFATokenizer(tok)
    if out_dir is not None:
        _save_atomic(ofa, out_dir)
    return ofa


def load_tokenizer(path: str | os.PathLike) -> OFATokenizer:
    """Load a tokenizer directory written by this module (or any fast tokenizer with OFA's layout)."""
    p = Path(path)
    if not (p / "tokenizer.json").is_file():
        raise FileNotFoundError(f"path={str(p)!r}: not a tokenizer directory (no tokenizer.json)")
    return OFATokenizer(Tokenizer.from_file(str(p / "tokenizer.json")))


# ------------------------------------------------------------------ bins and extras

_BIN_CACHE: "weakref.WeakKeyDictionary[OFATokenizer, tuple[list[int], dict[int, int]]]" = (
    weakref.WeakKeyDictionary()
)


def _bins(tok: OFATokenizer) -> tuple[list[int], dict[int, int]]:
    if tok not in _BIN_CACHE:
        vocab = tok.get_vocab()
        ids: list[int] = []
        while f"<bin_{len(ids)}>" in vocab:
            ids.append(vocab[f"<bin_{len(ids)}>"])
        _BIN_CACHE[tok] = (ids, {t: i for i, t in enumerate(ids)})
    return _BIN_CACHE[tok]


def bin_token_ids(tokenizer: OFATokenizer) -> list[int]:
    """Token ids of ``<bin_0>``, ``<bin_1>``, ... in bin order."""
    return _bins(tokenizer)[0]


def num_bins_of(tokenizer: OFATokenizer) -> int:
    return len(_bins(tokenizer)[0])


def id_to_bin(tokenizer: OFATokenizer, token_id: int) -> int | None:
    """The bin index of a token id, or None when it is not a bin token."""
    return _bins(tokenizer)[1].get(int(token_id))


def encode_text(tokenizer: OFATokenizer, text: str) -> list[int]:
    """BPE ids of ``text`` without bos/eos; ``<bin_i>``, ``<code_i>``, ``<mask>`` map straight to their ids.

    Whitespace just before such a token belongs to it (as in OFA's target ``"<bin_1> <bin_2>"``).
    """
    ids: list[int] = []
    pieces = EXTRA_RE.split(text)  # even positions: text, odd positions: extra tokens
    for k, piece in enumerate(pieces):
        if k % 2:
            tid = tokenizer.convert_tokens_to_ids(piece)
            if tid == UNK:
                raise ValueError(f"text contains {piece!r}, which this tokenizer does not have")
            ids.append(int(tid))
            continue
        if k + 1 < len(pieces):
            piece = piece.rstrip()
        if piece.strip():
            ids.extend(_bpe_ids(tokenizer, piece))
    return ids


_PIECE_CACHE: "weakref.WeakKeyDictionary[OFATokenizer, tuple[int, dict[str, tuple[int, ...]]]]" = (
    weakref.WeakKeyDictionary()
)
_PIECE_CACHE_MAX = 20_000


def _bpe_ids(tokenizer: OFATokenizer, piece: str) -> tuple[int, ...]:
    """BPE ids of a plain text piece, memoised per tokenizer (instructions and answers repeat a lot);
    the memo is dropped when the tokenizer's size changes (tokens added)."""
    size = len(tokenizer)
    entry = _PIECE_CACHE.get(tokenizer)
    if entry is None or entry[0] != size:
        entry = _PIECE_CACHE[tokenizer] = (size, {})
    cache = entry[1]
    ids = cache.get(piece)
    if ids is None:
        ids = tuple(tokenizer.encode(piece))
        if len(cache) < _PIECE_CACHE_MAX:
            cache[piece] = ids
    return ids


def decode_ids(tokenizer: OFATokenizer, ids: Iterable[int], skip_special: bool = True) -> str:
    """Inverse of :func:`encode_text`: ``<bin_i>``/``<code_i>``/``<mask>`` are written with one space before.

    ``skip_special`` drops ``<s>``, ``<pad>`` and ``</s>``.
    """
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            out.append(tokenizer.decode(run))
            run.clear()

    for tid in (int(t) for t in ids):
        if skip_special and tid in (BOS, PAD, EOS):
            continue
        tok = tokenizer.convert_ids_to_tokens(tid)
        if tok is not None and EXTRA_RE.fullmatch(tok):
            flush()
            out.append(tok if not out else " " + tok)
        else:
            run.append(tid)
    flush()
    return "".join(out)
