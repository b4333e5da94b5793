"""Pins the transformers behaviour the prefix mechanism relies on, on the installed release.

mmprompt never copies modeling code; it relies on four things, checked here so that a transformers release
that changes them fails loudly instead of silently training without prefixes:

1. the installed version lies in the range ``pyproject.toml`` declares;
2. BART-family attention (BART and Florence-2's language model) projects q/k/v itself and calls the function
   registered under ``config._attn_implementation`` with ``(module, query, key, value, mask)``, where key
   and value are [B, heads, T, head_dim] and already include the cache;
3. the masks it passes are None or 4-D (bool for sdpa, additive float for eager) whose last dim is the key
   length, so widening them by P columns is right;
4. Florence-2 keeps its language model at ``model.language_model`` with ``encoder``/``decoder.layers.N``
   and one text config shared by all its attention modules (the vision tower has its own).
"""

import inspect
import re
import tomllib
from pathlib import Path

import pytest
import torch
import transformers
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from mmprompt.tuning import hf
from mmprompt.tuning.testing import tiny_bart, tiny_florence2

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


pytestmark = pytest.mark.usefixtures("one_thread")


def supported_range() -> SpecifierSet:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    spec = [d for d in deps if re.match(r"transformers\b", d)]
    assert len(spec) == 1, deps
    return SpecifierSet(spec[0][len("transformers"):])


def test_installed_transformers_is_in_the_declared_range():
    declared = supported_range()
    assert Version(transformers.__version__) in declared, (transformers.__version__, str(declared))
    assert any(s.operator == "<" for s in declared), "the range needs an upper bound (next major)"


class _Recorder:
    """A registered attention implementation that records its calls and delegates to sdpa or eager."""

    def __init__(self, base):
        self.base, self.calls = base, []

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        self.calls.append((module, query.shape, key.shape, value.shape, attention_mask))
        delegate = ALL_ATTENTION_FUNCTIONS["sdpa"] if self.base == "sdpa" else hf._eager_for(module)
        return delegate(module, query, key, value, attention_mask, **kwargs)


@pytest.mark.parametrize("base", ["sdpa", "eager"])
def test_bart_attention_calls_the_registered_function_with_projected_keys_and_4d_masks(base):
    recorder = _Recorder(base)
    name = f"mmprompt_pin_{base}"
    AttentionInterface.register(name, recorder)
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    model = tiny_bart(attn_implementation=base)
    x = torch.randint(3, 48, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        reference = model(input_ids=x, attention_mask=mask, decoder_input_ids=x[:, :4]).logits
        model.config._attn_implementation_internal = name
        out = model(input_ids=x, attention_mask=mask, decoder_input_ids=x[:, :3], use_cache=True)
        name_of_cache = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
        step = model(input_ids=x, attention_mask=mask, decoder_input_ids=x[:, 3:4], use_cache=True,
                     **{name_of_cache: getattr(out, name_of_cache)})
    model.config._attn_implementation_internal = base
    torch.testing.assert_close(step.logits[:, 0], reference[:, 3], atol=1e-5, rtol=1e-4)
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    seen = {names[id(c[0])] for c in recorder.calls}
    assert seen == {f"model.{s}.layers.{i}.{a}" for s, a in [("encoder", "self_attn"), ("decoder", "self_attn"),
                                                           ("decoder", "encoder_attn")] for i in (0, 1)}
    for module, q, k, v, m in recorder.calls:
        assert type(module).__name__ == "BartAttention" and module.layer_idx in (0, 1)
        assert len(q) == len(k) == 4 and k == v
        assert k[-1] == module.head_dim and k[1] * k[-1] == module.k_proj.out_features
        if m is not None:
            assert m.dim() == 4 and m.shape[-1] == k[2] and m.shape[-2] in (1, q[2])
            assert m.dtype == (torch.bool if base == "sdpa" else torch.float32)
    step_self = [c for c in recorder.calls if names[id(c[0])].endswith("decoder.layers.0.self_attn")][-1]
    assert step_self[1][2] == 1 and step_self[2][2] == 4  # one query, keys = cache (3) + new (1)
    padded_encoder = [c for c in recorder.calls if names[id(c[0])] == "model.encoder.layers.0.self_attn"]
    assert all(c[4] is not None for c in padded_encoder)  # padding reaches the function as a 4-D mask


def test_florence2_language_model_layout_and_configs():
    model = tiny_florence2()
    lm = model.model.language_model
    assert type(lm).__name__ == "BartModel"
    attn = [m for n, m in model.named_modules() if re.search(r"language_model\.(en|de)coder\.layers\.\d+\.", n)
            and type(m).__name__ == "BartAttention"]
    assert len(attn) == 6
    assert {id(m.config) for m in attn} == {id(model.config.text_config)}
    restore = hf.enable(attn)
    try:
        assert model.config.text_config._attn_implementation == "mmprompt_prefix_sdpa"
        assert model.config.vision_config._attn_implementation == "sdpa"
    finally:
        hf.disable(restore)
    assert model.config.text_config._attn_implementation == "sdpa"
    assert {"mmprompt_prefix_sdpa", "mmprompt_prefix_eager"} <= set(ALL_ATTENTION_FUNCTIONS)
