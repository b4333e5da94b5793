"""Small deterministic inputs for tests and examples (random weights, random tokens and images)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from .config import OFAConfig
from .modeling import OFAModel


def tiny_model(vocab_size: int = 96, seed: int = 0, preset: str = "ofa-nano", **overrides) -> OFAModel:
    """A random-weight nano model in eval mode (small vocabulary so tests stay fast)."""
    model = OFAModel(OFAConfig.from_preset(preset, vocab_size=vocab_size, **overrides), seed=seed)
    return model.eval()


def make_batch(
    config: OFAConfig,
    text_lengths: Sequence[int] = (7, 5),
    target_lengths: Sequence[int] | None = None,
    image_size: int | None = 64,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A right-padded batch in the data pipeline's layout.

    Texts are ``[bos] + random ids + [eos]`` of the given total lengths, padded with ``pad``;
    decoder inputs start with ``bos`` (lengths ``target_lengths``, default 4 each, right-padded).
    """
    gen = torch.Generator().manual_seed(seed)
    bsz = len(text_lengths)
    target_lengths = list(target_lengths or [4] * bsz)
    low = 4  # skip bos/pad/eos/unk
    width = max(text_lengths)
    ids = torch.full((bsz, width), config.pad_token_id, dtype=torch.long)
    for i, n in enumerate(text_lengths):
        ids[i, :n] = torch.randint(low, config.vocab_size, (n,), generator=gen)
        ids[i, 0], ids[i, n - 1] = config.bos_token_id, config.eos_token_id
    t_width = max(target_lengths)
    dec = torch.full((bsz, t_width), config.pad_token_id, dtype=torch.long)
    for i, n in enumerate(target_lengths):
        dec[i, :n] = torch.randint(low, config.vocab_size, (n,), generator=gen)
        dec[i, 0] = config.bos_token_id
    batch = {"input_ids": ids, "decoder_input_ids": dec}
    if image_size:
        batch["patch_images"] = torch.rand(bsz, 3, image_size, image_size, generator=gen) * 2 - 1
        batch["patch_masks"] = torch.ones(bsz, dtype=torch.bool)
    return batch


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (steady on a shared, busy machine), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
