"""A small LLaVA grown on the built-in world, the way LLaVA itself is built (``vb-train pretrain --config llava``),
from transformers' own classes, in four stages, each cached by what it depends on and resumable:

1. ``lm``: the language model (``LlamaForCausalLM``) on the world's captions as text alone, as LLaVA starts from a
   pre-trained Vicuna;
2. ``clip``: a CLIP (``CLIPModel``: a ViT over the world's images and a text tower) trained contrastively on
   (image, caption) pairs, CLIP's objective, as LLaVA starts from a pre-trained CLIP;
3. ``align``: LLaVA's stage 1, ``LlavaForConditionalGeneration`` from those two, only the projector trained, on
   captioning (the caption's tokens predicted after the image), the vision tower and the language model frozen;
4. ``caption``: LLaVA's stage 2, the projector and the language model trained on captioning, the tower frozen.

The trap: a stage that depends on an earlier one must not reuse a cached stage made from other weights. The
mechanism: each stage's folder is named by a hash of the settings it depends on and of the stages before it, so a
changed caption stage reuses the first three, and a changed CLIP retrains everything after it. The cost: each stage
writes its weights once (and a resumable state every ``train.save_every_s`` seconds).

The world's images are read by LLaVA's own image processor padded to a square (LLaVA's own view), 14-pixel patches.
The final folder (``final/``) is a LLaVA checkpoint with its processor and tokenizer: ``vb-probe`` loads it as any.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from training.config import TrainConfig
from vb_probe.errors import VbProbeError

STAGES = ("lm", "clip", "align", "caption")
IMAGE_TOKEN = "<image>"
PREFIX = "USER: <image>\n"  # LLaVA-1.5's prompt before the caption (the probe's template: the caption follows)


# ----------------------------------------------------------------------------------------------- data


def world_pairs(data_dir: Path, config: TrainConfig) -> tuple[list[str], list[str], dict[str, int]]:
    """(image file names, captions) of the training splits of ``data_dir``'s Karpathy JSON, one pair a caption,
    each caption its words joined by spaces as the probe reads them; and the index of each image."""
    meta = json.loads((data_dir / config.data.captions).read_text())
    images, captions, index = [], [], {}
    for entry in meta["images"]:
        if entry["split"] not in config.data.train_splits:
            continue
        index.setdefault(entry["filename"], len(index))
        for sentence in entry["sentences"]:
            images.append(entry["filename"])
            captions.append(" ".join(sentence["tokens"]))
    if not captions:
        raise VbProbeError(f"{data_dir / config.data.captions}: no caption in the splits {list(config.data.train_splits)}; "
                           "point --data at a world folder (vb-train world)")
    return images, captions, index


def build_tokenizer(data_dir: Path, config: TrainConfig):
    """A byte-level BPE tokenizer over the world's captions (its nouns, colours and verbs whole tokens)."""
    from training.tiny import byte_level_tokenizer

    _, captions, _ = world_pairs(data_dir, config)
    words = sorted({w for c in captions for w in c.split()})
    return byte_level_tokenizer(words)


def image_processor_for(config: TrainConfig):
    """LLaVA's image processor: padded to a square (LLaVA's own view), shortest edge ``llava.image_size``."""
    from transformers import LlavaImageProcessorPil

    size = config.llava.image_size
    return LlavaImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                  do_pad=True)


def pixel_cache(data_dir: Path, config: TrainConfig, files: list[str], cache: Path) -> torch.Tensor:
    """Every training image through the image processor, [N, 3, S, S] float16, kept in ``cache`` (keyed by the
    images' names and the processor's settings: content-keyed as every cache)."""
    from PIL import Image

    processor = image_processor_for(config)
    key = hashlib.sha256(json.dumps([files, processor.to_dict()], sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = cache / f"pixels-{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    folder = data_dir / config.data.images
    pixels = torch.stack([processor(Image.open(folder / name).convert("RGB"), return_tensors="pt")["pixel_values"][0]
                          for name in files]).half()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(pixels, tmp)
    tmp.replace(path)
    return pixels


# ----------------------------------------------------------------------------------------------- models


def text_config(config: TrainConfig, tokenizer) -> dict:
    s = config.llava
    return dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=s.text_hidden,
                intermediate_size=s.text_hidden * 4, num_hidden_layers=s.text_layers,
                num_attention_heads=s.text_heads, num_key_value_heads=s.text_heads, max_position_embeddings=512,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def vision_config(config: TrainConfig) -> dict:
    s = config.llava
    return dict(model_type="clip_vision_model", hidden_size=s.vision_hidden, intermediate_size=s.vision_hidden * 4,
                num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads, image_size=s.image_size,
                patch_size=s.patch_size, projection_dim=s.vision_hidden)


def build_clip(config: TrainConfig, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    s = config.llava
    text = dict(vocab_size=len(tokenizer), hidden_size=s.vision_hidden, intermediate_size=s.vision_hidden * 4,
                num_hidden_layers=2, num_attention_heads=s.vision_heads, max_position_embeddings=64,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id)
    vision = {k: v for k, v in vision_config(config).items() if k != "model_type"}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=s.vision_hidden))


def build_llava(config: TrainConfig, tokenizer):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    llava = LlavaConfig(vision_config=vision_config(config), text_config=text_config(config, tokenizer),
                        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=-1,
                        projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(llava)
    model.processor = LlavaProcessor(image_processor=image_processor_for(config), tokenizer=tokenizer,
                                     patch_size=config.llava.patch_size, vision_feature_select_strategy="default",
                                     image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    return model


# ----------------------------------------------------------------------------------------------- batches


def caption_ids(tokenizer, captions: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each caption's token ids then ``</s>``, right-padded: ids and mask [B, T]."""
    rows = [tokenizer(c, add_special_tokens=False)["input_ids"][:max_len - 1] + [tokenizer.eos_token_id]
            for c in captions]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), 1
    return ids, mask


def prompt_ids(model, tokenizer) -> list[int]:
    """``PREFIX`` with the image placeholder expanded to the image's tokens, tokenized as one string, as LLaVA's
    processor makes the prompt the probe reads (no BOS: this tokenizer adds none, nor does the processor)."""
    return tokenizer(PREFIX.replace(IMAGE_TOKEN, IMAGE_TOKEN * model_image_tokens(model)))["input_ids"]


def captioning_batch(head: list[int], tokenizer, captions: list[str], pixels: torch.Tensor, max_len: int) -> dict:
    """LLaVA's inputs for captioning: the prompt ``head`` (:func:`prompt_ids`), the caption, ``</s>``; the labels are
    the caption's tokens and ``</s>`` only (-100 elsewhere), as LLaVA trains."""
    ids, mask = caption_ids(tokenizer, captions, max_len)
    head = torch.tensor(head)
    input_ids = torch.cat([head.expand(len(captions), -1), ids], 1)
    attention = torch.cat([torch.ones(len(captions), len(head), dtype=torch.long), mask], 1)
    labels = torch.where(attention.bool(), input_ids, torch.full_like(input_ids, -100))
    labels[:, :len(head)] = -100
    return {"input_ids": input_ids, "attention_mask": attention, "pixel_values": pixels.float(), "labels": labels}


def model_image_tokens(model) -> int:
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


# ----------------------------------------------------------------------------------------------- stages


def stage_keys(config: TrainConfig) -> dict[str, str]:
    """Each stage's cache key: a hash of the settings it reads and of the keys of the stages it builds on."""
    s = asdict(config.llava)
    common = {"seed": config.train.seed, "threads": config.train.threads, "batch": s["batch_size"],
              "captions": config.data.captions, "splits": list(config.data.train_splits)}
    text = {k: s[k] for k in ("text_hidden", "text_layers", "text_heads")}
    vision = {k: s[k] for k in ("image_size", "patch_size", "vision_hidden", "vision_layers", "vision_heads")}
    reads = {"lm": {**text, "steps": s["lm_steps"], "lr": s["lm_lr"]},
             "clip": {**vision, "steps": s["clip_steps"], "lr": s["clip_lr"]},
             # the captioning prompt as the probe reads it: one string, no BOS (an earlier trainer put a BOS first)
             "align": {"steps": s["align_steps"], "lr": s["align_lr"], "prompt": PREFIX, "bos": False},
             "caption": {"steps": s["caption_steps"], "lr": s["caption_lr"]}}
    before = {"lm": (), "clip": (), "align": ("lm", "clip"), "caption": ("align",)}
    keys: dict[str, str] = {}
    for stage in STAGES:
        text_of = json.dumps({"stage": stage, "common": common, "reads": reads[stage],
                              "before": [keys[b] for b in before[stage]]}, sort_keys=True)
        keys[stage] = hashlib.sha256(text_of.encode()).hexdigest()[:12]
    return keys


def lr_at(step: int, steps: int, peak: float, warmup: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` of the steps, then cosine to zero."""
    ramp = max(1, int(steps * warmup))
    if step < ramp:
        return peak * (step + 1) / ramp
    return peak * 0.5 * (1 + math.cos(math.pi * (step - ramp) / max(1, steps - ramp)))


def run_stage(name: str, folder: Path, model: torch.nn.Module, trained: list[torch.nn.Parameter], steps: int,
              lr: float, loss_of, config: TrainConfig, progress: bool, log) -> list[dict]:
    """``steps`` AdamW steps of ``loss_of(step) → loss`` on the ``trained`` parameters, resumed from
    ``folder/state.pt`` (written atomically every ``train.save_every_s`` seconds), ending in ``folder/weights.pt``
    (the whole model's weights). Returns the stage's log (step, loss)."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01)
    start, history = 0, []
    state_path = folder / "state.pt"
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, history = int(state["step"]), list(state["history"])
        log(f"      {name}: going on from step {start}")
    model.train()
    saved = time.time()
    bar = tqdm(total=steps, initial=start, desc=f"stage {name}", unit="step", disable=not progress, leave=False)
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = loss_of(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        if step % 25 == 0 or step == steps - 1:
            history.append({"stage": name, "step": step, "loss": round(float(loss.detach()), 5)})
        bar.update(1)
        if config.train.save_every_s and time.time() - saved > config.train.save_every_s and step + 1 < steps:
            _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                          "step": step + 1, "history": history}, state_path)
            saved = time.time()
    bar.close()
    model.eval()
    _save_atomic({"model": model.state_dict(), "history": history}, folder / "weights.pt")
    if state_path.is_file():
        state_path.unlink()
    return history


def _save_atomic(payload: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _sampler(n: int, batch: int, seed: int):
    """The indices of step ``step``'s batch: the same for a resumed run as for an uninterrupted one."""
    def indices(step: int) -> np.ndarray:
        epoch, offset = divmod(step * batch, n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        picked = order[offset:offset + batch]
        if len(picked) < batch:
            picked = np.concatenate([picked, np.random.default_rng([seed, epoch + 1]).permutation(n)[:batch - len(picked)]])
        return picked
    return indices


def pretrain_llava(config: TrainConfig, data_dir: Path, out: Path, *, progress: bool = True, log=print) -> dict:
    """The four stages into ``out/stages/<stage>-<key>/`` (each reused when its key matches), then ``out/final``:
    the LLaVA checkpoint with its processor. Returns the stages' logs and keys."""
    from vb_probe.atomic import atomic_dir

    data_dir, out = Path(data_dir), Path(out)
    torch.manual_seed(config.train.seed)
    tokenizer = build_tokenizer(data_dir, config)
    files, captions, index = world_pairs(data_dir, config)
    names = sorted(index, key=index.get)
    pixels = pixel_cache(data_dir, config, names, out / "cache")
    image_of = torch.tensor([index[f] for f in files])
    s, keys, logs = config.llava, stage_keys(config), {}
    folders = {stage: out / "stages" / f"{stage}-{keys[stage]}" for stage in STAGES}
    batch = s.batch_size

    def done(stage: str) -> dict | None:
        path = folders[stage] / "weights.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    # 1. the language model on captions alone
    lm = build_llava(config, tokenizer)
    language = lm.model.language_model
    if (state := done("lm")) is None:
        log(f"      stage lm: the language model on {len(captions)} captions, {s.lm_steps} steps")
        from transformers import LlamaConfig, LlamaForCausalLM

        causal = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in text_config(config, tokenizer).items()
                                                 if k != "model_type"}))
        pick = _sampler(len(captions), batch, config.train.seed)

        def lm_loss(step: int) -> torch.Tensor:
            ids, mask = caption_ids(tokenizer, [captions[i] for i in pick(step)], config.train.max_text_len)
            ids = torch.cat([torch.full((len(ids), 1), tokenizer.bos_token_id), ids], 1)
            mask = torch.cat([torch.ones(len(mask), 1, dtype=torch.long), mask], 1)
            labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
            return causal(input_ids=ids, attention_mask=mask, labels=labels).loss

        logs["lm"] = run_stage("lm", folders["lm"], causal, list(causal.parameters()), s.lm_steps, s.lm_lr, lm_loss,
                               config, progress, log)
        state = done("lm")
    else:
        log(f"      stage lm: reusing {folders['lm']}")
    logs.setdefault("lm", state["history"])
    lm_weights = state["model"]

    # 2. CLIP on (image, caption) pairs
    if (state := done("clip")) is None:
        log(f"      stage clip: contrastive on {len(captions)} (image, caption) pairs, {s.clip_steps} steps")
        clip = build_clip(config, tokenizer)
        pick = _sampler(len(captions), batch, config.train.seed + 1)

        def clip_loss(step: int) -> torch.Tensor:
            chosen = pick(step)
            # one caption an image within a batch: two captions of one image would be each other's negatives
            _, first = np.unique(image_of[chosen].numpy(), return_index=True)
            chosen = chosen[np.sort(first)]
            ids, mask = caption_ids(tokenizer, [captions[i] for i in chosen], config.train.max_text_len)
            return clip(input_ids=ids, attention_mask=mask, pixel_values=pixels[image_of[chosen]].float(),
                        return_loss=True).loss

        logs["clip"] = run_stage("clip", folders["clip"], clip, list(clip.parameters()), s.clip_steps, s.clip_lr,
                                 clip_loss, config, progress, log)
        state = done("clip")
    else:
        log(f"      stage clip: reusing {folders['clip']}")
    logs.setdefault("clip", state["history"])
    vision_weights = {k[len("vision_model."):]: v for k, v in state["model"].items() if k.startswith("vision_model.")}

    # 3. and 4.: LLaVA from the two, the projector alone, then the projector and the language model
    model = lm
    model.model.vision_tower.load_state_dict(vision_weights)
    language.load_state_dict({k[len("model."):]: v for k, v in lm_weights.items() if k.startswith("model.")})
    model.lm_head.load_state_dict({"weight": lm_weights["lm_head.weight"]})
    for parameter in model.model.vision_tower.parameters():
        parameter.requires_grad_(False)
    head = prompt_ids(model, tokenizer)  # the prompt the probe reads, tokenized once

    def caption_loss(step: int) -> torch.Tensor:
        chosen = pick(step)
        inputs = captioning_batch(head, tokenizer, [captions[i] for i in chosen], pixels[image_of[chosen]],
                                  config.train.max_text_len)
        return model(**inputs).loss

    for stage, steps, lr, seed, trained in (
            ("align", s.align_steps, s.align_lr, config.train.seed + 2,
             list(model.model.multi_modal_projector.parameters())),
            ("caption", s.caption_steps, s.caption_lr, config.train.seed + 3,
             list(model.model.multi_modal_projector.parameters()) + list(language.parameters())
             + list(model.lm_head.parameters()))):
        pick = _sampler(len(captions), batch, seed)  # read by caption_loss: each stage its own order
        if (state := done(stage)) is None:
            log(f"      stage {stage}: captioning, {steps} steps, training "
                + ("the projector" if stage == "align" else "the projector and the language model"))
            for parameter in language.parameters():
                parameter.requires_grad_(stage == "caption")
            for parameter in model.lm_head.parameters():
                parameter.requires_grad_(stage == "caption")
            logs[stage] = run_stage(stage, folders[stage], model, trained, steps, lr, caption_loss, config, progress,
                                    log)
        else:
            log(f"      stage {stage}: reusing {folders[stage]}")
            model.load_state_dict(state["model"])
            logs.setdefault(stage, state["history"])
    model.eval()
    final = out / "final"
    from vb_probe.families import quiet_loading

    with atomic_dir(final, kind="checkpoint") as tmp, quiet_loading():
        model.save_pretrained(str(tmp))
        model.processor.save_pretrained(str(tmp))
        (tmp / "stages.json").write_text(json.dumps({"keys": keys, "config": config.to_dict()}, indent=1))
    rows = [row for stage in STAGES for row in logs[stage]]
    from vb_probe.atomic import write_text

    write_text(out / "log.csv", "stage,step,loss\n" + "".join(f"{r['stage']},{r['step']},{r['loss']}\n" for r in rows))
    last = {f"{stage} loss": float(logs[stage][-1]["loss"]) for stage in STAGES if logs[stage]}
    return {"keys": keys, "logs": logs, "final": final, "skipped_images": 0, "eval": last}


__all__ = ["STAGES", "pretrain_llava", "stage_keys"]
