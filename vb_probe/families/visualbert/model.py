"""VisualBERT, written here with parameter names identical to transformers' ``VisualBertModel``.

Why not use transformers' model directly: it is eager-only, cannot mask text-to-text attention inside the
forward pass, and its "w/o early fusion" (``bypass_transformer``) path slices the mask wrongly. This model
keeps transformers' parameter names (so its checkpoints load as they are) and is held to it by tests.

Sequence layout everywhere: ``[CLS] w1 … wn [SEP]`` (T text tokens) followed by R region tokens.

Each attention block has named hook points (see :mod:`vb_probe.families.visualbert.hooks` for the public names):

* ``q``, ``k``, ``v``   ``[batch, head, seq, d_head]``
* ``scores``            ``[batch, head, query, key]`` pre-softmax, mask added
* ``pattern``           ``[batch, head, query, key]`` softmax probabilities (rows sum to 1)
* ``pattern_rows``      ``[n_rows, head, key]`` attention rows of selected (batch, query) pairs only
* ``z``                 ``[batch, seq, head, d_head]`` per-head outputs before the output projection
* ``resid_pre`` / ``resid_post`` of each layer ``[batch, seq, hidden]``

Fused attention (``scaled_dot_product_attention``) runs unless a hook needs the explicit scores or pattern,
or attentions are asked for.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import VisualBertConfig
from transformers.activations import ACT2FN

__all__ = ["VisualBertConfig", "VisualBertModel", "VisualBertOutput", "HookPoint", "extended_mask"]


class HookPoint(nn.Module):
    """Identity module whose only job is to be a stable place to hang forward hooks on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        return bool(self._forward_hooks)


def extended_mask(mask_2d: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[batch, key]`` 1/0 keep mask → additive ``[batch, 1, 1, key]`` mask (0 or dtype's minimum)."""
    keep = mask_2d[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


@dataclass
class VisualBertOutput:
    """What :meth:`VisualBertModel.forward` returns (field names as transformers' output).

    ``last_hidden_state`` [batch, T+R, hidden]; ``pooler_output`` [batch, hidden];
    ``hidden_states`` tuple of L+1 × [batch, T+R, hidden] (embeddings first);
    ``attentions`` tuple of L × [batch, head, T+R, T+R].
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    def __getitem__(self, index: int):
        return (self.last_hidden_state, self.pooler_output, self.hidden_states, self.attentions)[index]


class VisualBertEmbeddings(nn.Module):
    """Word + position + token-type embeddings for text; projected features + visual type/position for regions."""

    def __init__(self, config: VisualBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.visual_token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.visual_position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.visual_projection = nn.Linear(config.visual_embedding_dim, config.hidden_size)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None], persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        visual_embeds: torch.Tensor | None = None,
        visual_token_type_ids: torch.Tensor | None = None,
        image_text_alignment: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Returns ``[batch, T(+R), hidden]`` after LayerNorm and dropout.

        ``image_text_alignment`` [batch, R, A]: word positions aligned to each region, -1 for none; a region's
        visual position embedding adds the mean of its aligned words' position embeddings (the paper's f_p).
        """
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, text_len = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = self.position_ids[:, :text_len]
        if token_type_ids is None:
            token_type_ids = torch.zeros((batch, text_len), dtype=torch.long, device=inputs_embeds.device)
        text = inputs_embeds + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        if visual_embeds is None:
            return self.dropout(self.LayerNorm(text))

        regions_shape = visual_embeds.shape[:-1]
        if visual_token_type_ids is None:
            visual_token_type_ids = torch.ones(regions_shape, dtype=torch.long, device=visual_embeds.device)
        zero_positions = torch.zeros(regions_shape, dtype=torch.long, device=visual_embeds.device)
        visual_position = self.visual_position_embeddings(zero_positions)
        if image_text_alignment is not None:
            aligned = (image_text_alignment != -1).to(text.dtype)  # [batch, R, A]
            word_pos = self.position_embeddings(image_text_alignment.clamp(min=0))  # [batch, R, A, hidden]
            summed = (word_pos * aligned[..., None]).sum(2)
            count = aligned.sum(2).clamp(min=1.0)  # a region with no aligned word gets 0, not NaN
            visual_position = visual_position + (summed / count[..., None])[:, : regions_shape[1]]
        visual = (
            self.visual_projection(visual_embeds)
            + visual_position
            + self.visual_token_type_embeddings(visual_token_type_ids)
        )
        return self.dropout(self.LayerNorm(torch.cat([text, visual], dim=1)))


class VisualBertSelfAttention(nn.Module):
    """Multi-head self-attention with hook points; fused unless something needs the explicit pattern."""

    def __init__(self, config: VisualBertConfig):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                f"{config.num_attention_heads}; choose sizes that divide"
            )
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_scores, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_pattern_rows, self.hook_z = HookPoint(), HookPoint()
        # The rows that ``pattern_rows`` computes (a RowSelection); set by vb_probe.families.visualbert.hooks.
        self.rows_to_capture = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``hidden`` [batch, seq, hidden], additive ``mask`` [batch, 1, 1|seq, seq] (None: no padding) →
        (context [batch, seq, hidden], pattern [batch, head, seq, seq] or None)."""
        q = self.hook_q(self._split(self.query(hidden)))
        k = self.hook_k(self._split(self.key(hidden)))
        v = self.hook_v(self._split(self.value(hidden)))
        explicit = output_attentions or self.hook_scores.active or self.hook_pattern.active
        pattern = None
        if explicit:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
            scores = self.hook_scores(scores if mask is None else scores + mask)
            pattern = self.hook_pattern(scores.softmax(dim=-1))
            z = self.dropout(pattern) @ v
        else:
            dropout_p = self.dropout.p if self.training else 0.0
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype),
                                               dropout_p=dropout_p)
        if self.rows_to_capture is not None:
            self.hook_pattern_rows(self._rows(q, k, mask))
        z = self.hook_z(z.transpose(1, 2))  # [batch, seq, head, d_head]
        batch, seq = z.shape[:2]
        return z.reshape(batch, seq, -1), pattern

    def _rows(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention rows of the selected queries only: [n_rows, head, key].

        Queries are gathered per batch row into a padded [batch, head, m, d_head] block (m = most queries in
        one row), so one batched matmul against the keys does it, without copying the keys per query.
        """
        selection: RowSelection = self.rows_to_capture
        batch, heads, _, d_head = q.shape
        m = selection.padded.shape[1]
        q_sel = q.gather(2, selection.padded[:, None, :, None].expand(batch, heads, m, d_head))
        with torch.autocast(q.device.type, enabled=False):  # the probed rows in fp32 even under bf16 autocast
            scores = (q_sel.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)  # [batch, head, m, key]
        if mask is not None and mask.shape[2] > 1:  # a per-query mask (text-to-text blocking)
            mask = mask.gather(2, selection.padded[:, None, :, None].expand(batch, 1, m, mask.shape[-1]))
        probs = (scores if mask is None else scores + mask.float()).softmax(dim=-1)
        return probs[selection.row_batch, :, selection.row_slot]


@dataclass(frozen=True)
class RowSelection:
    """Which attention rows to compute: ``padded`` [batch, m] query positions per batch row (padding repeats
    a real one), and for each requested row i its place ``(row_batch[i], row_slot[i])`` in that block."""

    padded: torch.Tensor
    row_batch: torch.Tensor
    row_slot: torch.Tensor

    @classmethod
    def build(cls, batch_index: torch.Tensor, query_index: torch.Tensor, batch_size: int) -> "RowSelection":
        batch_index, query_index = batch_index.long(), query_index.long()
        counts = torch.bincount(batch_index, minlength=batch_size)
        m = max(int(counts.max()) if len(batch_index) else 1, 1)
        starts = torch.cumsum(counts, 0) - counts
        order = torch.argsort(batch_index, stable=True)
        slot = torch.empty_like(batch_index)
        slot[order] = torch.arange(len(batch_index), device=batch_index.device) - starts[batch_index[order]]
        padded = torch.zeros(batch_size, m, dtype=torch.long, device=batch_index.device)
        padded[batch_index, slot] = query_index
        return cls(padded, batch_index, slot)


class VisualBertSelfOutput(nn.Module):
    def __init__(self, config: VisualBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class VisualBertAttention(nn.Module):
    def __init__(self, config: VisualBertConfig):
        super().__init__()
        self.self = VisualBertSelfAttention(config)
        self.output = VisualBertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False):
        context, pattern = self.self(hidden, mask, output_attentions)
        return self.output(context, hidden), pattern


class VisualBertIntermediate(nn.Module):
    def __init__(self, config: VisualBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden))


class VisualBertFFNOutput(nn.Module):
    """transformers calls this ``VisualBertOutput``; renamed here to keep that name for the model output."""

    def __init__(self, config: VisualBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class VisualBertLayer(nn.Module):
    """One post-LayerNorm Transformer block (BERT's)."""

    def __init__(self, config: VisualBertConfig):
        super().__init__()
        self.attention = VisualBertAttention(config)
        self.intermediate = VisualBertIntermediate(config)
        self.output = VisualBertFFNOutput(config)
        self.hook_resid_pre, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False):
        hidden = self.hook_resid_pre(hidden)
        attended, pattern = self.attention(hidden, mask, output_attentions)
        out = self.output(self.intermediate(attended), attended)
        return self.hook_resid_post(out), pattern


class VisualBertEncoder(nn.Module):
    def __init__(self, config: VisualBertConfig):
        super().__init__()
        self.layer = nn.ModuleList([VisualBertLayer(config) for _ in range(config.num_hidden_layers)])


class VisualBertPooler(nn.Module):
    def __init__(self, config: VisualBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


class VisualBertModel(nn.Module):
    """VisualBERT encoder. ``config.bypass_transformer=True`` is the paper's "w/o early fusion": text runs
    through the 12 layers alone and the regions join in one ``additional_layer`` at the end."""

    def __init__(self, config: VisualBertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = VisualBertEmbeddings(config)
        self.encoder = VisualBertEncoder(config)
        self.pooler = VisualBertPooler(config) if add_pooling_layer else None
        if config.bypass_transformer:
            self.additional_layer = VisualBertLayer(config)
        # Text-to-text masking inside every layer ("intervene" mode); set by vb_probe.families.visualbert.hooks.
        self.block_text_to_text = False
        self.init_weights()

    def save_pretrained(self, path: str | os.PathLike, tokenizer=None) -> Path:
        """The encoder as a transformers folder (``config.json`` + ``model.safetensors``, + the tokenizer's files
        when given) that ``from_pretrained`` here and transformers' ``VisualBertModel.from_pretrained`` load as it
        is; written atomically, and never over a folder vb-probe did not write."""
        from vb_probe.families.visualbert.folders import write_checkpoint_folder

        return write_checkpoint_folder(path, self.config, self.state_dict(), "VisualBertModel", tokenizer)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike) -> "VisualBertModel":
        """The encoder of a transformers VisualBERT folder or hub id (through the hub cache; task models' heads are
        set aside), in eval mode."""
        from vb_probe.families.visualbert.folders import read_encoder
        from vb_probe.hub import resolve

        model, _, _ = read_encoder(cls, resolve(source, "source"))
        return model.eval()

    @property
    def blocks(self) -> list[VisualBertLayer]:
        """All layers that attend, in order (the extra fusion layer last when early fusion is off)."""
        extra = [self.additional_layer] if self.config.bypass_transformer else []
        return list(self.encoder.layer) + extra

    @torch.no_grad()
    def init_weights(self) -> None:
        """BERT's initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorm; the visual
        token-type and position embeddings copied from the text ones (the paper's choice)."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
                if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        if getattr(self.config, "special_visual_initialize", True):
            self.copy_visual_embeddings_from_text()

    @torch.no_grad()
    def copy_visual_embeddings_from_text(self) -> None:
        emb = self.embeddings
        emb.visual_token_type_embeddings.weight.copy_(emb.token_type_embeddings.weight)
        emb.visual_position_embeddings.weight.copy_(emb.position_embeddings.weight)

    def _full_mask(self, keep_2d: torch.Tensor, text_len: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [batch, 1, 1|S, S]; with text-to-text blocking, a [batch, 1, S, S] one."""
        mask = extended_mask(keep_2d, dtype)
        if not self.block_text_to_text:
            return mask
        seq = keep_2d.shape[1]
        block = torch.zeros(seq, seq, dtype=dtype, device=keep_2d.device)
        block[:text_len, :text_len] = torch.finfo(dtype).min
        return torch.maximum(mask + block, torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=mask.device))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        visual_embeds: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        visual_token_type_ids: torch.Tensor | None = None,
        image_text_alignment: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> VisualBertOutput:
        """Arguments as transformers' ``VisualBertModel.forward``.

        ``input_ids`` [batch, T]; ``attention_mask`` [batch, T]; ``visual_embeds`` [batch, R, visual_dim];
        ``visual_attention_mask`` [batch, R]; ``image_text_alignment`` [batch, R, A] (-1 = none).
        """
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None:
            raise ValueError("give input_ids or inputs_embeds")
        batch, text_len = reference.shape[:2]
        device = reference.device
        # no mask given at all means no padding: attention runs unmasked (the fastest fused kernels)
        unmasked = attention_mask is None and (visual_embeds is None or visual_attention_mask is None) \
            and not self.block_text_to_text
        if attention_mask is None:
            attention_mask = torch.ones(batch, text_len, device=device)
        keep = attention_mask
        if visual_embeds is not None:
            if visual_attention_mask is None:
                visual_attention_mask = torch.ones(visual_embeds.shape[:2], device=device)
            keep = torch.cat([attention_mask.to(visual_attention_mask.dtype), visual_attention_mask], dim=1)

        hidden = self.embeddings(
            input_ids, token_type_ids, visual_embeds, visual_token_type_ids, image_text_alignment,
            position_ids=position_ids, inputs_embeds=inputs_embeds,
        )
        dtype = hidden.dtype
        all_hidden: list[torch.Tensor] = []
        all_attn: list[torch.Tensor] = []
        bypass = self.config.bypass_transformer and visual_embeds is not None
        if bypass:
            # w/o early fusion: the 12 layers see the text alone; regions join in the additional layer.
            stack_input, regions = hidden[:, :text_len], hidden[:, text_len:]
            stack_mask = None if unmasked else extended_mask(attention_mask, dtype)
        else:
            stack_input, stack_mask = hidden, None if unmasked else self._full_mask(keep, text_len, dtype)
        for layer in self.encoder.layer:
            if output_hidden_states:
                all_hidden.append(stack_input)
            stack_input, pattern = layer(stack_input, stack_mask, output_attentions)
            if output_attentions:
                all_attn.append(pattern)
        if output_hidden_states:
            all_hidden.append(stack_input)
        sequence = stack_input
        if bypass:
            sequence, pattern = self.additional_layer(
                torch.cat([stack_input, regions], dim=1), None if unmasked else self._full_mask(keep, text_len, dtype),
                output_attentions
            )
            if output_attentions:
                all_attn.append(pattern)
            if output_hidden_states:
                all_hidden.append(sequence)
        pooled = self.pooler(sequence) if self.pooler is not None else None
        return VisualBertOutput(
            last_hidden_state=sequence,
            pooler_output=pooled,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
        )
