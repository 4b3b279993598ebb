"""Pre-training data on the vb_probe readers: Karpathy-split captions + region features.

Every batch is a pure function of (seed, step): resuming at step s rebuilds exactly the batches an
uninterrupted run would have seen, and each DDP rank takes its slice of the step's global batch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from training.config import DataSection, ObjectiveSection, TrainSection
from training.objectives import ENTITY, choose_masked, corrupt, word_classes_from_pos
from vb_probe.data.coco import read_karpathy
from vb_probe.data.features import open_features
from vb_probe.errors import DataError
from vb_probe.families.visualbert.inputs import pad_inputs


@dataclass
class EncodedCaption:
    """Sub-word ids of one caption (no special tokens), each token's word index and word class."""

    ids: np.ndarray
    words: np.ndarray
    classes: np.ndarray


@dataclass
class PretrainBatch:
    inputs: dict[str, torch.Tensor]
    mlm_batch_index: torch.Tensor  # [n_masked]
    mlm_positions: torch.Tensor  # [n_masked]
    mlm_labels: torch.Tensor  # [n_masked]
    mlm_is_entity: torch.Tensor  # [n_masked] bool
    sip_labels: torch.Tensor | None  # [batch]: 0 = text matches the image, 1 = it does not


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Host → device; to a GPU through pinned memory, so the copy overlaps the previous step's kernels."""
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def tag_captions(captions: list[tuple[str, ...]], cache_dir: Path | None) -> list[list[int]]:
    """Word classes from spaCy's POS tags (nouns are entity words), cached as JSON by caption-set hash."""
    digest = hashlib.sha256(json.dumps(captions).encode()).hexdigest()[:16]
    cache = cache_dir / f"word_classes.{digest}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    import spacy
    from spacy.tokens import Doc

    from vb_probe.data.parses import resolve_spacy_model

    nlp = spacy.load(resolve_spacy_model(), exclude=["parser", "ner", "lemmatizer"])
    docs = nlp.pipe((Doc(nlp.vocab, words=list(c)) for c in captions), batch_size=512)
    classes = [word_classes_from_pos([t.pos_ for t in doc]) for doc in docs]
    if cache is not None:
        from vb_probe.atomic import write_json

        write_json(cache, classes)
    return classes


class PretrainData:
    """Images with their captions and regions; builds deterministic masked batches."""

    def __init__(self, data_dir: Path, data: DataSection, tokenizer, cache_dir: Path | None = None,
                 visual_dim: int | None = None, processor=None):
        """``processor``: an image processor (ViLT's): images from ``data.images`` as pixels instead of region
        features."""
        data_dir = Path(data_dir)
        self.tokenizer = tokenizer
        self.processor = processor
        if processor is not None:
            from vb_probe.data.images import ImageFolder

            self.features = ImageFolder(data_dir / data.images)
        else:
            self.features = open_features(data_dir / data.features)
        if processor is None and visual_dim is not None and self.features.dim != visual_dim:
            raise DataError(f"{data_dir / data.features}: features are {self.features.dim}-d but the model expects "
                            f"{visual_dim}; pass the features the model was built for")
        images = read_karpathy(data_dir / data.captions)
        self.splits: dict[str, list[int]] = {}
        self.image_ids: list[str] = []
        self.captions: list[list[int]] = []  # image → caption indices
        flat: list[tuple[str, ...]] = []
        missing = 0
        for image in images:
            if image.image_id not in self.features:
                missing += 1
                continue
            self.splits.setdefault(image.split, []).append(len(self.image_ids))
            self.image_ids.append(image.image_id)
            self.captions.append(list(range(len(flat), len(flat) + len(image.captions))))
            flat.extend(image.captions)
        self.skipped_images = missing
        if not flat:
            raise DataError(f"{data_dir / data.captions}: no image has both captions and features; check --data")
        classes = tag_captions(flat, cache_dir)
        encoded = tokenizer(list(map(list, flat)), is_split_into_words=True, add_special_tokens=False,
                            split_special_tokens=True)  # data text is text
        self.encoded: list[EncodedCaption] = []
        for index in range(len(flat)):
            word_ids = np.array(encoded.word_ids(index), dtype=np.int64)
            self.encoded.append(EncodedCaption(np.array(encoded["input_ids"][index], dtype=np.int64), word_ids,
                                               np.array(classes[index], dtype=np.int64)[word_ids]))
        self.train_images = [i for s in data.train_splits for i in self.splits.get(s, [])]
        self.eval_images = self.splits.get(data.eval_split, [])
        if not self.train_images:
            raise DataError(f"{data_dir / data.captions}: no images in splits {list(data.train_splits)}; "
                            "set data.train_splits")
        self._image_cache: dict = {}  # image → its regions' features, or its processed pixels (ViLT)
        self.n_special = max(tokenizer.all_special_ids) + 1
        self.visual_dim = self.features.dim

    def pixels(self, image: int):
        """One image through the processor (a :class:`~vb_probe.families.vilt.PatchGrid`), kept in memory as
        float16 after the first read."""
        from vb_probe.families.vilt import patch_grid

        if image not in self._image_cache:
            grid = patch_grid(self.processor, self.processor.size_divisor,
                              self.features.image(self.image_ids[image]), self.image_ids[image])
            grid.pixel_values = grid.pixel_values.half()
            self._image_cache[image] = grid
        grid = self._image_cache[image]
        return replace(grid, pixel_values=grid.pixel_values.float())

    def regions(self, image: int, max_regions: int) -> np.ndarray:
        if image not in self._image_cache:
            self._image_cache[image] = self.features[self.image_ids[image]].features[:max_regions]
        return self._image_cache[image]

    def _sample(self, pool: list[int], rng: np.random.Generator, objective: ObjectiveSection):
        """(image, [captions], match): the paper's pair, a single-caption ITM sample, or one caption."""
        image = pool[int(rng.integers(len(pool)))]
        own = self.captions[image]
        first = own[int(rng.integers(len(own)))]
        if objective.sentence_image == "none" or not objective.grounded:
            return image, [first], True
        match = bool(rng.random() < 0.5)
        if match:
            others = [c for c in own if c != first] or own
            second = others[int(rng.integers(len(others)))]
        else:
            other_image = pool[int(rng.integers(len(pool)))]
            while other_image == image and len(pool) > 1:
                other_image = pool[int(rng.integers(len(pool)))]
            second = self.captions[other_image][int(rng.integers(len(self.captions[other_image])))]
        if objective.sentence_image == "itm":
            return image, [first if match else second], match
        return image, [first, second], match

    def batch(self, step: int, objective: ObjectiveSection, train: TrainSection, *, rank: int = 0, world: int = 1,
              split: str = "train", micro: tuple[int, int] = (0, 1), device="cpu") -> PretrainBatch:
        """The rank's share of micro-batch ``micro[0]`` of ``micro[1]`` of step ``step``'s global batch."""
        pool = self.train_images if split == "train" else self.eval_images
        if not pool:
            raise DataError(f"no images in the {split!r} split for pre-training")
        stream = 0 if split == "train" else 1
        rng = np.random.default_rng([train.seed, stream, step])
        samples = [self._sample(pool, rng, objective) for _ in range(train.batch_size)]
        mask_rngs = [np.random.default_rng([train.seed, stream, step, i]) for i in range(train.batch_size)]
        per_micro = train.batch_size // micro[1]
        chosen = list(range(micro[0] * per_micro, (micro[0] + 1) * per_micro))
        per_rank = len(chosen) // world
        chosen = chosen[rank * per_rank:(rank + 1) * per_rank]
        return self._collate([samples[i] for i in chosen], [mask_rngs[i] for i in chosen], objective, train, device)

    def _collate(self, samples, rngs, objective: ObjectiveSection, train: TrainSection, device) -> PretrainBatch:
        tok = self.tokenizer
        rows, types, labels_pos = [], [], []
        for (_, caption_ids, match), rng in zip(samples, rngs):
            ids, tts, lab = [tok.cls_token_id], [0], [(-1, False)]
            budget = train.max_text_len - 1 - len(caption_ids)
            for segment, caption in enumerate(caption_ids):
                enc = self.encoded[caption]
                n = min(len(enc.ids), max(1, budget // len(caption_ids)))
                caption_tokens = enc.ids[:n]
                # masked LM only where the text describes the image (mismatched text teaches ignoring it)
                predict = segment == 0 or match
                chosen = choose_masked(enc.classes[:n], enc.words[:n], objective, rng) if predict else np.zeros(n, bool)
                corrupted = corrupt(caption_tokens, chosen, tok.mask_token_id, vocab_size=len(tok),
                                    n_special=self.n_special, rng=rng)
                ids.extend(corrupted.tolist())
                tts.extend([segment] * n)
                lab.extend((int(t), bool(c == ENTITY)) if m else (-1, False)
                           for t, m, c in zip(caption_tokens, chosen, enc.classes[:n]))
                ids.append(tok.sep_token_id)
                tts.append(segment)
                lab.append((-1, False))
            rows.append(ids)
            types.append(tts)
            labels_pos.append(lab)
        b_idx, pos, labels, entity = [], [], [], []
        for b, lab in enumerate(labels_pos):
            for p, (label, is_entity) in enumerate(lab):
                if label >= 0:
                    b_idx.append(b)
                    pos.append(p)
                    labels.append(label)
                    entity.append(is_entity)
        if self.processor is not None:  # pixels (ViLT): the text, then the images padded as its processor pads
            from vb_probe.batching import pad_text
            from vb_probe.families.vilt import pad_pixels

            inputs = pad_text(rows, tok.pad_token_id, token_types=types)
            inputs.update(pad_pixels([self.pixels(image) for image, _, _ in samples]))
        else:
            regions = [self.regions(image, train.max_regions) for image, _, _ in samples] if objective.grounded else None
            inputs = pad_inputs(rows, tok.pad_token_id, token_types=types, regions=regions, region_types=1)
        sip = None
        if objective.grounded and objective.sentence_image != "none":
            sip = torch.tensor([0 if match else 1 for _, _, match in samples], dtype=torch.long, device=device)
        return PretrainBatch(
            inputs={k: to_device(v, device) for k, v in inputs.items()},
            mlm_batch_index=torch.tensor(b_idx, dtype=torch.long, device=device),
            mlm_positions=torch.tensor(pos, dtype=torch.long, device=device),
            mlm_labels=torch.tensor(labels, dtype=torch.long, device=device),
            mlm_is_entity=torch.tensor(entity, dtype=torch.bool, device=device),
            sip_labels=sip,
        )
