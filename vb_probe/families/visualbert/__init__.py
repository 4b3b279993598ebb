"""VisualBERT (Li et al. 2019) as a model family: the model written here (:mod:`.model`, transformers' parameter
names), its checkpoints (:mod:`.checkpoints`), pre-training heads (:mod:`.pretraining`), hook points
(:mod:`.hooks`) and inputs (:mod:`.inputs`: caption sub-words, then detector regions).

Image tokens are detector regions: each one's box comes from the feature file, in the image's pixels, and a
query hits when the most-attended region has IoU ≥ 0.5 with a gold box (the paper's rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vb_probe.errors import DataError, VbProbeError
from vb_probe.families import FamilyBase, Site, pin, register_family
from vb_probe.hub import DEFAULT_TOKENIZER

MODEL_TYPE = "visual_bert"


@register_family
class VisualBertFamily(FamilyBase):
    """Single stream: ``[CLS] caption [SEP]`` then R region tokens; one self-attention site (layers × heads)."""

    name = "visualbert"
    model_type = MODEL_TYPE
    default_tokenizer = DEFAULT_TOKENIZER  # every uclanlp checkpoint was trained with bert-base-uncased
    has_masked_lm = True  # pre-training checkpoints: attribution and the causal check

    def recognise(self, source: dict | Any) -> bool:
        if isinstance(source, dict):  # config.json, or the config a fine-tuned model.pt carries
            return source.get("model_type") == MODEL_TYPE
        from vb_probe.families.visualbert.model import VisualBertModel

        inner = getattr(source, "visual_bert", None)
        return isinstance(source, VisualBertModel) or isinstance(inner, VisualBertModel) or \
            getattr(getattr(source, "config", None), "model_type", None) == MODEL_TYPE

    def load(self, source: Path | Any, *, dtype=None, device_map=None):
        """Our encoder from a folder (transformers format, with or without the ``visual_bert.`` prefix of task
        models), ours in memory (edits included), our pre-training model (its encoder), or transformers'
        ``VisualBertModel`` / ``VisualBertFor*`` (converted by parameter name; task heads set aside)."""
        from vb_probe.families.visualbert.checkpoints import load_model, model_from_module
        from vb_probe.families.visualbert.model import VisualBertModel

        if isinstance(source, (str, Path)):
            from vb_probe.families.visualbert.checkpoints import FINETUNED, load_finetuned

            folder = Path(source)
            if not (folder / "config.json").is_file() and (folder / FINETUNED).is_file():
                return pin(load_finetuned(folder))  # a `vb-train finetune` folder: its encoder
            return pin(load_model(folder))
        if isinstance(source, VisualBertModel):
            return pin(source)
        return pin(model_from_module(source))

    def sites(self, model) -> list[Site]:
        return [Site("self", len(model.blocks), model.config.num_attention_heads)]

    def prepare(self, model, features, options: dict) -> dict:
        if model.config.bypass_transformer:
            raise VbProbeError(f"{options.get('ckpt') or 'the model'}: a model without early fusion has regions in "
                               "its last layer only; probe an early-fusion checkpoint (bypass_transformer false)")
        if features.dim != model.config.visual_embedding_dim:
            raise DataError(f"{options.get('features') or features.source}: region features are {features.dim}-d but "
                            f"the checkpoint's visual_embedding_dim is {model.config.visual_embedding_dim}; pass the "
                            "features the checkpoint was trained on")
        visual_token_type = options.get("visual_token_type")
        if visual_token_type is None:
            visual_token_type = getattr(model.config, "visual_token_type_id", 1)
        if not 0 <= visual_token_type < model.config.type_vocab_size:
            raise VbProbeError(f"--visual-token-type {visual_token_type}: the checkpoint has "
                               f"{model.config.type_vocab_size} token types; use 0..{model.config.type_vocab_size - 1}")
        return {"visual_token_type": visual_token_type}

    def text_limit(self, model) -> int:
        return model.config.max_position_embeddings

    def collate(self, model, items, tokenizer, facts: dict, max_text_len: int, features=None):
        from vb_probe.families.visualbert.inputs import collate

        return collate(items, tokenizer, facts.get("visual_token_type", 1), max_text_len, features)

    def rows(self, model, batch, site: Site, mask: str = "posthoc", precision: str = "fp32") -> torch.Tensor:
        """``posthoc`` drops the text columns after the pass; ``intervene`` blocks text-to-text attention inside
        it. ``precision="bf16"`` runs the forward under bf16 autocast; a half-precision model reads its features
        in its own precision. Only the probed rows are computed (the rest of the attention stays fused)."""
        from vb_probe.families.visualbert.hooks import capture_attention_rows, mask_text_to_text

        device_type = batch.inputs["input_ids"].device.type
        dtype = next(model.parameters()).dtype
        inputs = batch.inputs if dtype == torch.float32 else \
            {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.inputs.items()}
        with capture_attention_rows(model, batch.batch_index, batch.query_index, len(batch.inputs["input_ids"])) \
                as cache, torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            if mask == "intervene":
                with mask_text_to_text(model):
                    model(**inputs)
            else:
                model(**inputs)
        return cache.stack("attn.pattern_rows")[..., batch.extras["text_len"]:].float().cpu()

    def ablate_heads(self, model, heads):
        """The model's own hook points: each head's ``z`` zeroed before the output projection."""
        from vb_probe.families.visualbert.hooks import ablate_heads

        return ablate_heads(getattr(model, "visual_bert", model), heads)

    def load_masked_lm(self, folder: Path):
        """The encoder with its masked-LM and sentence-image heads (a pre-training checkpoint), in eval mode: what
        attribution and the causal check need."""
        from vb_probe.families.visualbert.checkpoints import load_pretraining_model

        return load_pretraining_model(folder)

    @property
    def interventions(self):
        """Attribution and the causal check on masked phrase words (:mod:`.interventions`)."""
        from vb_probe.families.visualbert import interventions

        return interventions

    def twin(self, model, seed: int):
        from vb_probe.families.visualbert.model import VisualBertModel

        torch.manual_seed(seed)
        return pin(VisualBertModel(model.config).to(next(model.parameters()).device).eval(), checkpoint_path=None,
                   load_notes=[])

