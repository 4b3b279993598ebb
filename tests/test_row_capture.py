"""Row capture for decoders (toward #29): tiny random transformers models; the captured rows equal eager
output_attentions (≤ 1e-6) with the logits unchanged, through padding, grouped-query attention and sdpa's causal
fast path; and PaliGemma's bidirectional image prefix is kept only because the mask function is registered too."""

from __future__ import annotations

import pytest
import torch

from vb_probe.families.decoder.rows import ROW_CAPTURE, capture_rows, register, row_capture_attention


def _eager_rows(model, inputs: dict, positions: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    rows = [torch.stack([layer[b, :, positions[b]] for b in range(len(positions))]) for layer in out.attentions]
    return out.logits, rows


@pytest.mark.parametrize("padded", [True, False])
def test_llama_rows_equal_eager_attention_and_the_logits_are_unchanged(padded):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 100, (2, 24))
    inputs = {"input_ids": ids}
    if padded:  # a padding mask: sdpa gets a mask; without one it takes the causal fast path (mask None)
        mask = torch.ones_like(ids)
        mask[1, 17:] = 0
        inputs["attention_mask"] = mask
    positions = torch.tensor([[0, 9, 23], [3, 11, 16]])
    logits, expected = _eager_rows(model, inputs, positions)
    model.set_attn_implementation(register())
    with torch.no_grad(), capture_rows(positions) as plan:
        captured = model(**inputs).logits
    torch.testing.assert_close(captured, logits, rtol=0, atol=1e-5)
    assert sorted(plan.rows) == [0, 1, 2]
    for layer, rows in plan.rows.items():
        assert rows.shape == (2, 4, 3, 24)
        torch.testing.assert_close(rows, expected[layer], rtol=0, atol=1e-6)
    assert float(plan.rows[0][0, :, 0, 1:].abs().sum()) == 0.0  # causal: the first token sees itself only


def _paligemma():
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    torch.manual_seed(0)
    text = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=1, head_dim=8, max_position_embeddings=256)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                  patch_size=8)
    model = PaliGemmaForConditionalGeneration(PaliGemmaConfig(text_config=text, vision_config=vision,
                                                              image_token_id=299, projection_dim=32)).eval()
    image_tokens = 16  # (32 / 8)²
    ids = torch.cat([torch.full((1, image_tokens), 299), torch.randint(0, 290, (1, 8))], 1)
    prefix = image_tokens + 3  # the image and the prompt attend both ways; the suffix is causal
    token_types = torch.cat([torch.zeros(1, prefix, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], 1)
    inputs = {"input_ids": ids, "pixel_values": torch.randn(1, 3, 32, 32), "token_type_ids": token_types,
              "attention_mask": torch.ones_like(ids)}
    return model, inputs


def test_paligemmas_prefix_stays_bidirectional_only_with_the_mask_function():
    from transformers import AttentionInterface

    model, inputs = _paligemma()
    positions = torch.tensor([[2, 5, 20]])  # two image tokens (they see the whole prefix) and a suffix token
    logits, expected = _eager_rows(model, inputs, positions)
    model.set_attn_implementation({"text_config": register(), "vision_config": "sdpa"})
    with torch.no_grad(), capture_rows(positions) as plan:
        captured = model(**inputs).logits
    torch.testing.assert_close(captured, logits, rtol=0, atol=1e-5)
    for layer, rows in plan.rows.items():
        torch.testing.assert_close(rows, expected[layer], rtol=0, atol=1e-6)
    assert float(plan.rows[0][0, :, 0, 3:19].sum()) > 0  # an image token attends to tokens after it
    # the same function registered without its mask function: transformers builds no mask, the prefix goes causal
    AttentionInterface.register("vb_probe_rows_without_mask", row_capture_attention)
    model.set_attn_implementation({"text_config": "vb_probe_rows_without_mask", "vision_config": "sdpa"})
    with torch.no_grad(), capture_rows(positions) as plan:
        wrong = model(**inputs).logits
    assert not torch.allclose(wrong, logits, atol=1e-4)
    assert not torch.allclose(plan.rows[0], expected[0], atol=1e-3)
    assert float(plan.rows[0][0, :, 0, 3:].sum()) == 0.0  # the image token no longer sees past itself


def test_gemma3s_image_block_and_sliding_window_are_kept_only_with_the_mask_function():
    """Gemma 3 (a sliding-window layer of window 8, then a global one): an image token attends to the image tokens
    after it (its bidirectional block), a caption token 9 or more places past the image sees none of it on the
    sliding layer and all of it on the global one; rows equal eager with the logits unchanged, and the same
    function without its mask function loses the block."""
    from transformers import AttentionInterface

    from training.tiny import tiny_gemma3

    model = tiny_gemma3()
    inputs = dict(model.processor(images=torch.zeros(3, 64, 64), text="<start_of_image>a man rides a brown horse near "
                                  "the blue car on the street", return_tensors="pt"))
    image = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()  # 16 image tokens
    last = inputs["input_ids"].shape[1] - 1
    positions = torch.tensor([[int(image[0]), int(image[7]), last]])
    assert last - int(image[-1]) >= 8  # the caption's last token is past the sliding window of every image token
    logits, expected = _eager_rows(model, inputs, positions)
    model.set_attn_implementation({"text_config": register(), "vision_config": "sdpa"})
    with torch.no_grad(), capture_rows(positions) as plan:
        captured = model(**inputs).logits
    torch.testing.assert_close(captured, logits, rtol=0, atol=1e-5)
    for layer, rows in plan.rows.items():
        torch.testing.assert_close(rows, expected[layer], rtol=0, atol=1e-6)
    first, last_image = int(image[0]), int(image[-1])
    assert float(plan.rows[1][0, :, 0, first + 1:last_image + 1].sum()) > 0  # the block: the first sees the rest
    assert float(plan.rows[0][0, :, 2, first:last_image + 1].sum()) == 0.0  # sliding layer: out of the window
    assert float(plan.rows[1][0, :, 2, first:last_image + 1].sum()) > 0  # global layer: the whole image
    AttentionInterface.register("vb_probe_rows_without_mask", row_capture_attention)
    model.set_attn_implementation({"text_config": "vb_probe_rows_without_mask", "vision_config": "sdpa"})
    with torch.no_grad(), capture_rows(positions) as plan:
        wrong = model(**inputs).logits
    assert not torch.allclose(wrong, logits, atol=1e-4)
    assert float(plan.rows[1][0, :, 0, first + 1:].sum()) == 0.0  # the first image token no longer sees past itself


def test_without_a_plan_nothing_is_kept_and_the_name_is_the_registered_one():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    assert register() == ROW_CAPTURE
    model.set_attn_implementation(ROW_CAPTURE)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 50, (1, 6)))  # no capture_rows: sdpa's output only, nothing stored
    with capture_rows(torch.tensor([[1]])) as plan:
        pass
    assert plan.rows == {}
