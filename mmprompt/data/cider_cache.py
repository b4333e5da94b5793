"""OFA's cached CIDEr tokens (``cider_cached_tokens/coco-valid-words.p``): document frequencies of a reference
corpus, read through the restricted unpickler. :mod:`mmprompt.eval.cider` scores CIDEr-D with them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mmprompt.data.safe_pickle import load_plain_pickle


@dataclass(frozen=True)
class CiderCache:
    """Document frequencies (n-gram tuple -> number of reference sets holding it) and the set count."""

    document_frequency: dict[tuple[str, ...], float]
    ref_len: float


def load_cider_cache(path: str | os.PathLike) -> CiderCache:
    """OFA's cached CIDEr tokens (``{"document_frequency": ..., "ref_len": ...}``), plain data only."""
    value = load_plain_pickle(path)
    if not isinstance(value, dict) or not {"document_frequency", "ref_len"} <= set(value):
        raise ValueError(f"path={str(path)!r}: expected {{'document_frequency': ..., 'ref_len': ...}}")
    df = value["document_frequency"]
    if not isinstance(df, dict) or not all(isinstance(k, tuple) for k in df):
        raise ValueError(f"path={str(path)!r}: document_frequency must map n-gram tuples to counts")
    return CiderCache({k: float(v) for k, v in df.items()}, float(value["ref_len"]))
