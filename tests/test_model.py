"""The model is held to transformers' VisualBertModel on the same weights, and its paths agree."""

from __future__ import annotations

import pytest
import torch
from conftest import random_inputs, reference_and_ours, tiny_config

from vb_probe.errors import VbProbeError
from vb_probe.families.visualbert import hooks


def assert_same_outputs(reference, ours, inputs, atol=1e-5):
    with torch.no_grad():
        ref = reference(**inputs, output_attentions=True, output_hidden_states=True)
        out = ours(**inputs, output_attentions=True, output_hidden_states=True)
    assert out.last_hidden_state.shape == ref.last_hidden_state.shape
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=atol, rtol=0)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=atol, rtol=0)
    assert len(out.hidden_states) == len(ref.hidden_states) == reference.config.num_hidden_layers + 1
    for mine, theirs in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(mine, theirs, atol=atol, rtol=0)
    assert len(out.attentions) == len(ref.attentions) == reference.config.num_hidden_layers
    for mine, theirs in zip(out.attentions, ref.attentions):
        torch.testing.assert_close(mine, theirs, atol=atol, rtol=0)


@pytest.mark.parametrize("alignment", [False, True])
def test_parity_with_transformers_tiny(alignment):
    config = tiny_config()
    reference, ours = reference_and_ours(config)
    assert_same_outputs(reference, ours, random_inputs(config, alignment=alignment))


def test_parity_with_transformers_bert_base_size():
    from transformers import VisualBertConfig

    config = VisualBertConfig(visual_embedding_dim=64, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0, vocab_size=1000)
    reference, ours = reference_and_ours(config, seed=1)
    inputs = random_inputs(config, batch=2, text_len=9, regions=6, alignment=True)
    assert_same_outputs(reference, ours, inputs)
    assert len(ours(**inputs, output_attentions=True).attentions) * config.num_attention_heads == 144


def test_fused_path_equals_explicit_path(config):
    _, ours = reference_and_ours(config)
    inputs = random_inputs(config)
    with torch.no_grad():
        fused = ours(**inputs).last_hidden_state
        explicit = ours(**inputs, output_attentions=True).last_hidden_state
        with hooks.capture(ours, "blocks.*.attn.pattern") as cache:
            hooked = ours(**inputs).last_hidden_state
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    torch.testing.assert_close(hooked, explicit, atol=1e-5, rtol=0)
    assert len(cache) == config.num_hidden_layers


def test_attention_rows_sum_to_one_and_padding_gets_nothing(config):
    _, ours = reference_and_ours(config)
    inputs = random_inputs(config)
    with torch.no_grad():
        attn = ours(**inputs, output_attentions=True).attentions
    keep = torch.cat([inputs["attention_mask"], inputs["visual_attention_mask"]], dim=1).bool()
    for pattern in attn:
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-6, rtol=0)
        for b in range(1, keep.shape[0]):  # row 0 has no padding
            assert (~keep[b]).any()
            assert pattern[b][..., ~keep[b]].abs().max() == 0.0


def test_selected_rows_equal_full_pattern(config):
    _, ours = reference_and_ours(config)
    inputs = random_inputs(config)
    batch_index = torch.tensor([0, 1, 2, 2])
    query_index = torch.tensor([3, 0, 4, 1])
    with torch.no_grad():
        full = ours(**inputs, output_attentions=True).attentions
        with hooks.capture_attention_rows(ours, batch_index, query_index) as cache:
            ours(**inputs)
    rows = cache.stack("attn.pattern_rows")  # [layer, n, head, key]
    assert rows.shape == (config.num_hidden_layers, 4, config.num_attention_heads, full[0].shape[-1])
    for layer, pattern in enumerate(full):
        torch.testing.assert_close(rows[layer], pattern[batch_index, :, query_index], atol=1e-6, rtol=0)
    assert all(not p.active for p in hooks.hook_points(ours).values())
    assert all(b.attention.self.rows_to_capture is None for b in ours.blocks)


def test_selected_rows_under_bf16_autocast_stay_fp32_and_close(config):
    """--precision bf16: the forward runs in bf16, the probed rows are computed in fp32 from its q and k."""
    _, ours = reference_and_ours(config)
    inputs = random_inputs(config)
    batch_index, query_index = torch.tensor([0, 1, 2]), torch.tensor([3, 0, 4])
    with torch.no_grad():
        full = ours(**inputs, output_attentions=True).attentions
        with hooks.capture_attention_rows(ours, batch_index, query_index) as cache, \
                torch.autocast("cpu", dtype=torch.bfloat16):
            ours(**inputs)
    rows = cache.stack("attn.pattern_rows")
    assert rows.dtype == torch.float32
    torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:-1]), atol=1e-5, rtol=0)
    for layer, pattern in enumerate(full):
        reference_rows = pattern[batch_index, :, query_index]
        torch.testing.assert_close(rows[layer], reference_rows, atol=3e-2, rtol=0)  # bf16's 8-bit mantissa
        assert not torch.equal(rows[layer], reference_rows)  # the forward really ran in bf16


def test_capture_removes_hooks_after_exception(config):
    _, ours = reference_and_ours(config)
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.capture(ours, ["blocks.*.attn.pattern", "blocks.0.resid_post"]):
            raise RuntimeError("boom")
    assert all(not p.active for p in hooks.hook_points(ours).values())


def test_text_to_text_block_is_exactly_zero_and_restored(config):
    _, ours = reference_and_ours(config)
    inputs = random_inputs(config)
    text_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        with hooks.mask_text_to_text(ours):
            attn = ours(**inputs, output_attentions=True).attentions
        after = ours(**inputs, output_attentions=True).attentions
    for pattern in attn:
        assert pattern[:, :, :text_len, :text_len].abs().max() == 0.0
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-6, rtol=0)
    assert after[0][:, :, :text_len, :text_len].sum() > 0  # the edit did not outlive its context
    assert ours.block_text_to_text is False


def test_head_ablation_zero_changes_only_that_head_contribution(config):
    _, ours = reference_and_ours(config)
    inputs = random_inputs(config)
    with torch.no_grad():
        with hooks.capture(ours, "blocks.1.attn.z") as clean:
            base = ours(**inputs).last_hidden_state
        with hooks.ablate_heads(ours, [(1, 2)]):
            with hooks.capture(ours, "blocks.1.attn.z") as edited:
                ablated = ours(**inputs).last_hidden_state
    z_clean, z_edit = clean["blocks.1.attn.z"], edited["blocks.1.attn.z"]
    assert z_edit[:, :, 2].abs().max() == 0.0
    torch.testing.assert_close(z_edit[:, :, [0, 1, 3]], z_clean[:, :, [0, 1, 3]])
    assert (ablated - base).abs().max() > 1e-4
    with pytest.raises(VbProbeError, match="L9H0 does not exist"):
        with hooks.ablate_heads(ours, [(9, 0)]):
            pass


def test_mean_ablation_sets_head_to_its_mean(config):
    _, ours = reference_and_ours(config)
    inputs = random_inputs(config)
    with torch.no_grad(), hooks.ablate_heads(ours, [(0, 1)], mode="mean"):
        with hooks.capture(ours, "blocks.0.attn.z") as cache:
            ours(**inputs)
    z = cache["blocks.0.attn.z"][:, :, 1]
    torch.testing.assert_close(z, z[:1, :1].expand_as(z))


def test_without_early_fusion_text_stack_ignores_regions(config):
    from vb_probe.families.visualbert.model import VisualBertModel

    cfg = tiny_config(bypass_transformer=True)
    torch.manual_seed(0)
    model = VisualBertModel(cfg).eval()
    inputs = random_inputs(cfg)
    other = dict(inputs, visual_embeds=torch.randn_like(inputs["visual_embeds"]))
    with torch.no_grad():
        a = model(**inputs, output_hidden_states=True, output_attentions=True)
        b = model(**other, output_hidden_states=True)
    text_len = inputs["input_ids"].shape[1]
    # the 12-layer stack saw text only: its states do not depend on the regions
    torch.testing.assert_close(a.hidden_states[cfg.num_hidden_layers], b.hidden_states[cfg.num_hidden_layers])
    assert a.hidden_states[cfg.num_hidden_layers].shape[1] == text_len
    # the fusion layer joins them
    assert a.last_hidden_state.shape[1] == text_len + inputs["visual_embeds"].shape[1]
    assert (a.last_hidden_state - b.last_hidden_state).abs().max() > 1e-4
    assert len(a.attentions) == cfg.num_hidden_layers + 1


def test_no_mask_given_equals_all_ones_mask(config):
    _, ours = reference_and_ours(config)
    inputs = random_inputs(config, batch=1)  # row 0 has no padding
    unmasked = {k: v for k, v in inputs.items() if "attention_mask" not in k}
    with torch.no_grad():
        a = ours(**inputs, output_attentions=True)
        b = ours(**unmasked, output_attentions=True)
        c = ours(**unmasked)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.attentions[-1], b.attentions[-1], atol=1e-6, rtol=0)
    torch.testing.assert_close(a.last_hidden_state, c.last_hidden_state, atol=1e-5, rtol=0)
