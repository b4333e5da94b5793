"""OFA numerics are pinned: logits of the shipped checkpoints (and of seeded random models covering the
post-LN, non-NormFormer and other activation branches) equal stored references bit for bit.

For every model, a fixed 2-row batch (padded text, a 32×32 image, one sample's image masked) is run
without and with prefixes attached to every attention (encoder self, decoder self, decoder cross),
through the full teacher-forced decoder and through one incremental step after a cached prefix of
the target; and once in train mode from a fixed seed (dropout and drop-path draws in a fixed order).
Stored per output: a strided slice of the vocabulary (``[..., ::32]``) and the float64 sum over the
whole vocabulary (one changed bit anywhere changes it).

Regenerate (only on purpose, from code whose numerics you trust):
``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python tests/test_ofa_numerics.py --write``.
The reference records torch's version and CPU capability; elsewhere floating-point kernels may round
differently, so there the comparison is ``assert_close`` at 1e-5 instead of bit-exact.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmprompt.core.atomic import atomic_write
from mmprompt.models.ofa import OFAConfig, OFAModel, from_pretrained
from mmprompt.models.ofa.testing import one_thread
from mmprompt.core.injection import attach, detach

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "ofa_numerics.safetensors"
CHECKPOINTS = ("ofa-nano", "ofa-nano-small")
RANDOM_VARIANTS = {
    "random-postln-relu": dict(encoder_normalize_before=False, decoder_normalize_before=False, normformer=False,
                               activation_function="relu", entangle_position_embedding=True, scale_embedding=True,
                               attention_dropout=0.1, activation_dropout=0.1, encoder_drop_path_rate=0.2,
                               decoder_drop_path_rate=0.2),
    "random-gelu-new": dict(activation_function="gelu_new"),
}
CASES = CHECKPOINTS + tuple(RANDOM_VARIANTS)
VOCAB_STRIDE = 32
N_PREFIX = 3


def _platform() -> dict[str, str]:
    return {"torch": torch.__version__.split("+")[0], "cpu": torch.backends.cpu.get_cpu_capability()}


def _model(case: str) -> OFAModel:
    if case in CHECKPOINTS:
        return from_pretrained(ROOT / "data" / "checkpoints" / case, strict=True)
    config = OFAConfig.from_preset("ofa-nano-small", vocab_size=96, **RANDOM_VARIANTS[case])
    return OFAModel(config, seed=0).eval()


def _batch(config: OFAConfig) -> dict[str, torch.Tensor]:
    """2 rows: text lengths 6 and 4 (right-padded), target lengths 4 and 3, the second image masked."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, config.vocab_size, (2, 6), generator=gen)
    ids[:, 0] = config.bos_token_id
    ids[0, 5], ids[1, 3] = config.eos_token_id, config.eos_token_id
    ids[1, 4:] = config.pad_token_id
    dec = torch.randint(4, config.vocab_size, (2, 4), generator=gen)
    dec[:, 0] = config.bos_token_id
    dec[1, 3] = config.pad_token_id
    images = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    return {"input_ids": ids, "patch_images": images, "patch_masks": torch.tensor([True, False]),
            "decoder_input_ids": dec}


def _attach_prefixes(model: OFAModel) -> list[torch.nn.Module]:
    """Seeded prefix key/values on every attention module; returns the modules (to detach)."""
    gen = torch.Generator().manual_seed(1)
    sites = [m for name, m in model.named_modules() if name.endswith(("self_attn", "cross_attn"))]
    for site in sites:
        shape = (1, site.num_heads, N_PREFIX, site.head_dim)
        pk, pv = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        attach(site, lambda _batch_size, pk=pk, pv=pv: (pk, pv))
    return sites


def _outputs(model: OFAModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full teacher-forced logits, and the logits of the last target position decoded after a cache."""
    dec = batch["decoder_input_ids"]
    with torch.no_grad():
        enc = model.encode(input_ids=batch["input_ids"], patch_images=batch["patch_images"],
                           patch_masks=batch["patch_masks"])
        full, _ = model.decode(dec, enc, use_cache=False)
        _, past = model.decode(dec[:, :-1], enc, use_cache=True)
        step, _ = model.decode(dec[:, -1:], enc, past=past, use_cache=False)
    return {"full": full, "step": step}


def _train_outputs(model: OFAModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Teacher-forced logits in train mode from a fixed seed: pins the order of dropout/drop-path draws."""
    model.train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return {"full": model(**batch).logits}
    finally:
        model.eval()


def compute(case: str) -> dict[str, torch.Tensor]:
    """The stored reductions of one model's outputs, keyed
    ``{case}/{plain|prefix|train}/{full|step}/{slice|sum}``."""
    with one_thread():
        model = _model(case)
        batch = _batch(model.config)
        runs = {"plain": _outputs(model, batch)}
        sites = _attach_prefixes(model)
        try:
            runs["prefix"] = _outputs(model, batch)
        finally:
            for site in sites:
                detach(site)
        runs["train"] = _train_outputs(model, batch)
    result = {}
    for variant, outputs in runs.items():
        for kind, logits in outputs.items():
            key = f"{case}/{variant}/{kind}"
            result[f"{key}/slice"] = logits[..., ::VOCAB_STRIDE].contiguous()
            result[f"{key}/sum"] = logits.double().sum(-1)
    return result


def _read_reference() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(REFERENCE), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})


@pytest.fixture(scope="module")
def reference():
    return _read_reference()


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_the_stored_reference(reference, case):
    tensors, meta = reference
    got = compute(case)
    expected = {k: v for k, v in tensors.items() if k.startswith(f"{case}/")}
    assert sorted(got) == sorted(expected)
    exact = {k: meta.get(k) for k in _platform()} == _platform()
    for key, value in got.items():
        if exact:
            assert torch.equal(value, expected[key]), f"{key}: max |Δ| {(value - expected[key]).abs().max()}"
        else:
            torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-5, msg=key)


def test_prefixes_and_cache_change_what_they_should(reference):
    """The stored cases are not degenerate: prefixes and dropout change the logits; the cached step equals the
    last column of the full run to float tolerance (not bitwise: different matmul shapes)."""
    tensors, _ = reference
    for case in CASES:
        plain, prefix, train = (tensors[f"{case}/{v}/full/slice"] for v in ("plain", "prefix", "train"))
        assert (plain - prefix).abs().max() > 1e-2
        assert (plain - train).abs().max() > 1e-2  # dropout was active
        for variant in ("plain", "prefix"):
            full, step = (tensors[f"{case}/{variant}/{k}/slice"] for k in ("full", "step"))
            torch.testing.assert_close(step[:, 0], full[:, -1], rtol=1e-4, atol=1e-4)


def write_reference() -> Path:
    tensors = {k: v for case in CASES for k, v in compute(case).items()}
    return atomic_write(REFERENCE, lambda tmp: save_file(tensors, tmp, metadata=_platform()))


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit(f"usage: {sys.argv[0]} --write   (rewrites {REFERENCE})")
    print(write_reference())
