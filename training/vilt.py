"""Pre-training a small ViLT on the built-in world: transformers' own ``ViltForMaskedLM`` (masked LM with the image)
plus an image–text matching head on its pooled output, trained by the same loop as VisualBERT
(:mod:`training.loop`), which asks this module for the model, the image inputs and the saved folder.

The saved folder is a ``ViltForMaskedLM`` checkpoint (``config.json`` model_type ``vilt``, the image processor's
``preprocessor_config.json`` and the tokenizer beside it), so ``vb-probe`` loads it like any ViLT checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.config import TrainConfig


def image_processor_for(config: TrainConfig):
    """ViLT's image processor at the config's size: shortest edge ``model.image_size``, multiples of the patch."""
    from vb_probe.families.vilt import image_processor

    processor, _ = image_processor(None)
    processor.size = {"shortest_edge": config.model.image_size}
    processor.size_divisor = config.model.patch_size
    return processor


class ViltForPreTraining(nn.Module):
    """``ViltForMaskedLM`` and an image–text matching classifier (0: the text matches the image, 1: it does not),
    called as the trainer calls VisualBERT's pre-training model: ``(inputs, mlm_batch_index, mlm_positions)`` →
    (masked-LM logits [n_masked, vocab], matching logits [batch, 2])."""

    def __init__(self, config):
        from transformers import ViltForMaskedLM

        super().__init__()
        self.mlm = ViltForMaskedLM(config)
        self.itm = nn.Linear(config.hidden_size, 2)
        self.config = self.mlm.config

    def forward(self, inputs: dict[str, torch.Tensor], mlm_batch_index: torch.Tensor, mlm_positions: torch.Tensor):
        out = self.mlm.vilt(**inputs)
        masked = out.last_hidden_state[mlm_batch_index, mlm_positions]  # [n_masked, hidden]
        return self.mlm.mlm_score(masked), self.itm(out.pooler_output)


def build_vilt(config: TrainConfig, vocab_size: int) -> ViltForPreTraining:
    """A random-initialised ViLT of the config's shape."""
    from transformers import ViltConfig

    m = config.model
    vilt = ViltConfig(vocab_size=vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
                      num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
                      hidden_dropout_prob=m.hidden_dropout_prob,
                      attention_probs_dropout_prob=m.attention_probs_dropout_prob,
                      max_position_embeddings=m.max_position_embeddings, image_size=m.image_size,
                      patch_size=m.patch_size, max_image_length=-1)
    torch.manual_seed(config.train.seed)
    model = ViltForPreTraining(vilt)
    if m.patch_init == "colour":
        colour_stem(model.mlm.vilt.embeddings.patch_embeddings.projection)
    return model


@torch.no_grad()
def colour_stem(projection: nn.Conv2d) -> None:
    """Channels 0–11 of the patch embedding (``projection``: [hidden, 3, patch, patch]) become the mean of one colour
    channel over one quadrant of the patch (quadrant-major: top-left red, green, blue, then top-right, …): where a
    colour lies in a patch is readable from the first step, as from a pre-trained vision stem."""
    patch = projection.weight.shape[-1]
    half = patch // 2
    for quadrant in range(4):
        rows = slice((quadrant // 2) * half, (quadrant // 2 + 1) * half)
        cols = slice((quadrant % 2) * half, (quadrant % 2 + 1) * half)
        for colour in range(3):
            channel = quadrant * 3 + colour
            projection.weight[channel] = 0.0
            projection.weight[channel, colour, rows, cols] = 1.0 / (half * half)
            projection.bias[channel] = 0.0


def save_vilt(model: ViltForPreTraining, path: Path, tokenizer, processor, extra_files: dict[str, str]) -> Path:
    """The masked-LM model as a transformers folder (with the tokenizer, the image processor and the matching
    head's weights in ``itm_head.safetensors``), written atomically as a vb-probe checkpoint."""
    from safetensors.torch import save_file

    from vb_probe.atomic import atomic_dir

    with atomic_dir(Path(path), kind="checkpoint") as tmp:
        model.mlm.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        save_file({k: v.detach().contiguous().cpu() for k, v in model.itm.state_dict().items()},
                  str(tmp / "itm_head.safetensors"))
        for name, text in extra_files.items():
            (tmp / name).write_text(text)
    return Path(path)
