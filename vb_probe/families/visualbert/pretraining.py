"""Pre-training heads on top of the encoder, with transformers' parameter names so saved models load there too.

``VisualBertForPreTraining``: masked-LM head (decoder tied to the word embeddings) and the
sentence-image head (``seq_relationship``; label 0 = the text matches the image, 1 = it does not,
transformers' convention). Masked-LM logits are computed only at the masked positions.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from vb_probe.families.visualbert.model import VisualBertConfig, VisualBertModel


class PredictionHeadTransform(nn.Module):
    def __init__(self, config: VisualBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden)))


class LMPredictionHead(nn.Module):
    def __init__(self, config: VisualBertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = PredictionHeadTransform(config)
        self.word_embeddings = [word_embeddings]  # a list: tied, not registered twice
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden] → [n, vocab] logits (decoder weight = word embeddings)."""
        return nn.functional.linear(self.transform(hidden), self.word_embeddings[0].weight, self.bias)


class PreTrainingHeads(nn.Module):
    def __init__(self, config: VisualBertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = LMPredictionHead(config, word_embeddings)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class VisualBertForPreTraining(nn.Module):
    """Encoder + pre-training heads; :func:`vb_probe.families.visualbert.checkpoints.save_pretraining_model` writes a folder that
    transformers' ``VisualBertForPreTraining.from_pretrained`` and ``vb_probe.load_model`` both load."""

    def __init__(self, encoder: VisualBertModel):
        super().__init__()
        self.visual_bert = encoder
        config = encoder.config
        self.cls = PreTrainingHeads(config, encoder.embeddings.word_embeddings)
        std = config.initializer_range
        with torch.no_grad():
            for module in (self.cls.predictions.transform.dense, self.cls.seq_relationship):
                module.weight.normal_(0.0, std)
                module.bias.zero_()

    @property
    def config(self) -> VisualBertConfig:
        return self.visual_bert.config

    def forward(self, inputs: dict[str, torch.Tensor], mlm_batch_index: torch.Tensor, mlm_positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (masked-LM logits [n_masked, vocab] at the given (batch, position) pairs,
        sentence-image logits [batch, 2])."""
        out = self.visual_bert(**inputs)
        masked = out.last_hidden_state[mlm_batch_index, mlm_positions]
        return self.cls.predictions(masked), self.cls.seq_relationship(out.pooler_output)
