"""Shared fixtures (keep minimal; other modules may append their own)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A small generated synthetic dataset (every split capped at 8 rows) with its nano tokenizer."""
    from mmprompt.data.synth import generate

    return generate(tmp_path_factory.mktemp("synthetic") / "ci", "ci", seed=0, max_per_split=8, progress=False)


@pytest.fixture(scope="session")
def nano_tokenizer(tiny_synthetic):
    from mmprompt.data.tokenizer import load_tokenizer

    return load_tokenizer(tiny_synthetic / "tokenizer")


@pytest.fixture(scope="session")
def random_ofa_dir(tmp_path_factory, nano_tokenizer):
    """A random ofa-nano-small saved with the nano tokenizer, as a shipped checkpoint would be (read-only)."""
    from mmprompt.models.ofa import OFAModel, save_pretrained

    out = tmp_path_factory.mktemp("ckpt") / "tiny-ofa"
    save_pretrained(OFAModel.from_preset("ofa-nano-small", seed=0, vocab_size=len(nano_tokenizer)), out)
    nano_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    steady timings on a shared 2-core machine, and the same thread count on both sides of exact comparisons."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
