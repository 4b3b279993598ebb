"""LXMERT (Tan & Bansal 2019) as a model family: transformers' own ``LxmertModel``, not re-implemented.

Dual stream: the caption's sub-words and the detector regions are encoded apart, then meet in the cross layers
(5 in the base model), where the language stream attends to the regions. The probed site is that
language → vision cross-attention: ``cross_encoder_attentions``, one ``[batch, head, text, regions]`` map a cross
layer. LXMERT's attention is computed eagerly, and these maps are small (text × regions), so the rows are read
from the model's own output. Image tokens are the feature file's regions, scored by the IoU ≥ 0.5 rule; their
position input is the box normalised by the image size (``visual_pos``, LXMERT's own convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vb_probe.errors import DataError
from vb_probe.families import FamilyBase, Site, pin, register_family
from vb_probe.families.loading import load_pretrained
from vb_probe.hub import DEFAULT_TOKENIZER

MODEL_TYPE = "lxmert"


@register_family
class LxmertFamily(FamilyBase):
    """Text and regions in two streams; one probed site, the language stream's cross-attention to the regions."""

    name = "lxmert"
    model_type = MODEL_TYPE
    default_tokenizer = DEFAULT_TOKENIZER  # LXMERT's checkpoints use the bert-base-uncased vocabulary

    def load(self, source: Path | Any, *, dtype=None, device_map=None):
        """``LxmertModel`` from a folder (task models' checkpoints too: transformers drops their heads) or from an
        object in memory (``LxmertModel`` as it is, the ``lxmert`` inside ``LxmertFor*``)."""
        from transformers import LxmertModel

        if isinstance(source, (str, Path)):
            model, notes = load_pretrained(LxmertModel, Path(source), attention="eager")  # a task head set aside
            return pin(model, checkpoint_path=Path(source), load_notes=notes).eval()
        return pin(getattr(source, "lxmert", source))  # LxmertFor*: its encoder

    def sites(self, model) -> list[Site]:
        return [Site("cross", model.config.x_layers, model.config.num_attention_heads)]

    def head_outputs(self, model) -> list[torch.nn.Module]:
        """Each cross layer's ``visual_attention.output.dense``. That module serves both directions (language →
        vision, the probed one, then vision → language, with the same weights): a head is zeroed in both, as
        zeroing its weights would."""
        return [layer.visual_attention.output.dense for layer in getattr(model, "lxmert", model).encoder.x_layers]

    def prepare(self, model, features, options: dict) -> dict:
        if features.dim != model.config.visual_feat_dim:
            raise DataError(f"{options.get('features') or features.source}: region features are {features.dim}-d but "
                            f"the checkpoint's visual_feat_dim is {model.config.visual_feat_dim}; pass the features "
                            "the checkpoint was trained on")
        return {}

    def text_limit(self, model) -> int:
        return model.config.max_position_embeddings

    def collate(self, model, items, tokenizer, facts: dict, max_text_len: int, features=None):
        from vb_probe.batching import layout, pad_regions, pad_text, read_regions
        from vb_probe.tokenization import tokenize_captions

        regions = read_regions(items, features)
        tokenized = tokenize_captions(tokenizer, [list(item.words) for item in items], max_length=max_text_len)
        inputs = pad_text([t.input_ids for t in tokenized], tokenizer.pad_token_id)
        inputs["visual_feats"] = pad_regions([r.features for r in regions])
        inputs["visual_pos"] = pad_regions([normalised_boxes(r) for r in regions])
        mask = torch.zeros(inputs["visual_feats"].shape[:2], dtype=torch.long)
        for b, r in enumerate(regions):
            mask[b, :len(r)] = 1
        inputs["visual_attention_mask"] = mask
        batch = layout(items, [t.word_last_token for t in tokenized], [r.boxes for r in regions],
                       [r.confidences for r in regions], inputs)
        batch.region_features = [r.features for r in regions]
        return batch

    def rows(self, model, batch, site: Site, mask: str = "posthoc", precision: str = "fp32") -> torch.Tensor:
        """Language → vision attention of every cross layer, the query positions' rows: [layer, n, head, R]. The
        text-to-text masking modes of single-stream models do not apply: a cross-attention row covers regions only."""
        device_type = batch.inputs["input_ids"].device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(**batch.inputs, output_attentions=True)
        maps = torch.stack(out.cross_encoder_attentions).transpose(2, 3)  # [layer, batch, text, head, regions]
        return maps[:, batch.batch_index, batch.query_index].float().cpu()  # [layer, n, head, R]

    def twin(self, model, seed: int):
        from transformers import LxmertModel

        torch.manual_seed(seed)
        return pin(LxmertModel(model.config).to(next(model.parameters()).device).eval(), checkpoint_path=None,
                   load_notes=[])


def normalised_boxes(regions) -> np.ndarray:
    """LXMERT's ``visual_pos``: boxes divided by the image's width and height (by the regions' own extent when the
    file gives no image size), [R, 4] in 0..1."""
    width = regions.image_w or float(regions.boxes[:, 2].max())
    height = regions.image_h or float(regions.boxes[:, 3].max())
    return (np.asarray(regions.boxes, np.float32) / np.array([width, height, width, height], np.float32)).clip(0, 1)
