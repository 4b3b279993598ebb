"""Shared fixtures: tiny configs and models, so the suite runs in few seconds per test on 2 cores."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """The suite's own cache folder (TSV indexes, parses), never the user's."""
    os.environ["VB_PROBE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    return os.environ["VB_PROBE_CACHE"]


def tiny_config(**overrides):
    from transformers import VisualBertConfig

    values = dict(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=64, visual_embedding_dim=12, max_position_embeddings=64,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    values.update(overrides)
    return VisualBertConfig(**values)


@pytest.fixture
def config():
    return tiny_config()


def random_inputs(config, batch=3, text_len=7, regions=5, seed=0, alignment=False):
    """Padded text and padded regions: row b has text_len - b tokens and regions - b regions."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, config.vocab_size, (batch, text_len), generator=g)
    attention_mask = torch.ones(batch, text_len, dtype=torch.long)
    visual_mask = torch.ones(batch, regions, dtype=torch.long)
    for b in range(batch):
        if b:
            attention_mask[b, text_len - b:] = 0
            input_ids[b, text_len - b:] = 0
            visual_mask[b, regions - b:] = 0
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=torch.zeros(batch, text_len, dtype=torch.long),
        visual_embeds=torch.randn(batch, regions, config.visual_embedding_dim, generator=g),
        visual_attention_mask=visual_mask,
        visual_token_type_ids=torch.ones(batch, regions, dtype=torch.long),
    )
    if alignment:
        align = torch.full((batch, regions, 2), -1, dtype=torch.long)
        align[:, 0, 0] = 1
        align[:, 1, :] = torch.tensor([2, 3])
        inputs["image_text_alignment"] = align
    return inputs


def reference_and_ours(config, seed=0):
    """transformers' VisualBertModel with random weights, and ours with the same weights."""
    from transformers import VisualBertModel as Reference

    from vb_probe.families.visualbert.model import VisualBertModel

    torch.manual_seed(seed)
    reference = Reference(config).eval()
    ours = VisualBertModel(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours
