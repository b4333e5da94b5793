"""Site discovery across BART-family layouts, the native (OFA-style) injection path, and Florence-2."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmprompt.tuning import PrefixConfig, ShallowPromptConfig, apply_method, apply_prefix, count_parameters
from mmprompt.tuning import discover_sites, remove_method
from mmprompt.core.injection import extend_with_prefix
from mmprompt.tuning.testing import tiny_bart, tiny_florence2

GEN = dict(do_sample=False, max_new_tokens=4, suppress_tokens=[2], eos_token_id=2, pad_token_id=1)


pytestmark = pytest.mark.usefixtures("one_thread")


class NativeAttention(nn.Module):
    """OFA-style attention: calls extend_with_prefix itself (no transformers involved)."""

    def __init__(self, d=12, heads=3, calls_hook=True):
        super().__init__()
        self.calls_hook = calls_hook
        self.num_heads, self.head_dim = heads, d // heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def _split(self, x):
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x, memory=None):
        src = x if memory is None else memory
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(src)), self._split(self.v_proj(src))
        mask = None
        if self.calls_hook:
            k, v, mask = extend_with_prefix(self, k, v, mask)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(x.shape))


class NativeLayer(nn.Module):
    def __init__(self, cross):
        super().__init__()
        self.self_attn = NativeAttention()
        self.cross_attn = NativeAttention() if cross else None
        self.fc1, self.fc2 = nn.Linear(12, 24), nn.Linear(24, 12)
        self.final_layer_norm = nn.LayerNorm(12)

    def forward(self, x, memory=None):
        x = x + self.self_attn(x)
        if self.cross_attn is not None:
            x = x + self.cross_attn(x, memory)
        return self.final_layer_norm(x + self.fc2(torch.relu(self.fc1(x))))


class NativeStack(nn.Module):
    def __init__(self, n, cross):
        super().__init__()
        self.layers = nn.ModuleList(NativeLayer(cross) for _ in range(n))

    def forward(self, x, memory=None):
        for layer in self.layers:
            x = layer(x, memory)
        return x


class NativeSeq2Seq(nn.Module):
    """OFA-like names (encoder/decoder at top level, `cross_attn`) plus a CLIP-like vision encoder."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed_tokens = nn.Embedding(30, 12)
        self.vision_model = nn.Module()
        self.vision_model.encoder = NativeStack(2, cross=False)  # same layout, must be ignored
        self.encoder, self.decoder = NativeStack(3, cross=False), NativeStack(2, cross=True)

    def forward(self, src, tgt):
        return self.decoder(self.embed_tokens(tgt), self.encoder(self.embed_tokens(src)))


def test_bart_sites_and_sizes():
    backbone = discover_sites(tiny_bart(layers=3))
    cross = [s.name for s in backbone.of_kind("decoder_cross")]
    assert cross == [f"model.decoder.layers.{i}.encoder_attn" for i in range(3)]
    assert len(backbone.of_kind("encoder_self")) == 3 and len(backbone.of_kind("decoder_self")) == 3
    enc = backbone.stacks["encoder"]
    assert (enc.path, enc.layers, enc.heads, enc.head_dim, enc.d_model) == ("model.encoder", 3, 2, 8, 16)
    assert backbone.layer_paths("decoder")[2] == "model.decoder.layers.2"


def test_ofa_style_names_vision_towers_ignored_and_native_injection():
    model = NativeSeq2Seq().eval()
    backbone = discover_sites(model)
    assert {s.name for s in backbone.sites if "vision" in s.name} == set()
    cross = [s.name for s in backbone.of_kind("decoder_cross")]
    assert cross == ["decoder.layers.0.cross_attn", "decoder.layers.1.cross_attn"]
    assert backbone.stacks["encoder"].layers == 3 and backbone.stacks["decoder"].heads == 3
    src, tgt = torch.randint(0, 30, (2, 5)), torch.randint(0, 30, (2, 4))
    with torch.no_grad():
        before = model(src, tgt)
    config = PrefixConfig(length=2, sites=("encoder_self", "decoder_self", "decoder_cross"), init_std=1.0, dropout=0.0)
    apply_prefix(model, config)
    assert count_parameters(model)["trainable"] == 2 * 2 * 12 * (3 + 2 + 2)
    with torch.no_grad():
        during = model(src, tgt)
    assert (during - before).abs().max() > 1e-2
    remove_method(model)
    with torch.no_grad():
        assert torch.equal(model(src, tgt), before)


def test_attention_that_ignores_the_hook_is_reported(caplog):
    model = NativeSeq2Seq().eval()
    model.encoder.layers[1].self_attn.calls_hook = False
    apply_prefix(model, PrefixConfig(length=2))
    with caplog.at_level("WARNING", logger="mmprompt.tuning.prefix"):
        model(torch.randint(0, 30, (1, 4)), torch.randint(0, 30, (1, 3)))
    assert "encoder.layers.1.self_attn" in caplog.text
    assert "encoder.layers.0.self_attn" not in caplog.text


def test_model_without_sites_is_refused():
    with pytest.raises(ValueError, match="no BART-family attention modules"):
        discover_sites(nn.Sequential(nn.Linear(4, 4)))


def _florence_inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.full((2, 17), 60), torch.randint(3, 50, (2, 5), generator=g)], dim=1)
    return torch.randn(2, 3, 32, 32, generator=g), ids


def test_florence2_language_model_prefixes_generation_and_removal():
    model = tiny_florence2()
    pixels, ids = _florence_inputs()
    backbone = discover_sites(model)
    assert backbone.stacks["encoder"].path == "model.language_model.encoder"
    assert all("vision" not in s.name for s in backbone.sites)
    with torch.no_grad():
        before = model(input_ids=ids, pixel_values=pixels, decoder_input_ids=ids[:, -3:]).logits
    config = PrefixConfig(length=3, sites=("encoder_self", "decoder_self", "decoder_cross"), init_std=1.0, dropout=0.0)
    apply_prefix(model, config)
    assert model.config.vision_config._attn_implementation == "sdpa"  # the vision tower is untouched
    out = model.generate(input_ids=ids, pixel_values=pixels, **GEN, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        full = model(input_ids=ids, pixel_values=pixels, decoder_input_ids=out.sequences[:, :-1]).logits
    torch.testing.assert_close(torch.stack(out.logits, 1), full, atol=1e-5, rtol=1e-4)
    assert model.generate(input_ids=ids, pixel_values=pixels, num_beams=3, **GEN).shape[0] == 2
    remove_method(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=pixels, decoder_input_ids=ids[:, -3:]).logits, before)


def test_florence2_shallow_prompt_generation():
    model = tiny_florence2()
    pixels, ids = _florence_inputs()
    apply_method(model, ShallowPromptConfig(length=2, init_std=1.0))
    assert count_parameters(model)["trainable"] == 2 * 16
    greedy = model.generate(input_ids=ids, pixel_values=pixels, **GEN)
    beams = model.generate(input_ids=ids, pixel_values=pixels, num_beams=1, **GEN, use_cache=False)
    assert torch.equal(greedy, beams)
