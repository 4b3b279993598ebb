"""Writing the built-in world: every file in the real formats (Flickr30K Entities, RefCOCO in the refer layout,
Visual Genome, LXMERT TSV and BAN HDF5 features, Karpathy COCO captions, CoNLL-U parses, VQA/NLVR2/VCR task files,
a WordPiece vocabulary, images), into a folder written whole."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from training.world.scenes import ALL_NOUNS, FEATURE_DIM, PLURALS, Scene, WorldGenerator, WorldStats, world_stats
from training.world.tasks import write_task_files
from vb_probe.atomic import atomic_dir, write_json
from vb_probe.data.features import write_hdf5, write_tsv
from vb_probe.data.flickr30k import Annotation, format_annotation, format_sentence, read_sentences
from vb_probe.data.parses import Parse, to_conllu

MIN_SCENES = 10  # a tenth each for val and test, and the rest to train on


def build_world(out: str | Path, images: int = 1000, seed: int = 0, hdf5: bool = True, render: bool = True,
                progress: bool = True) -> WorldStats:
    """Generate ``images`` scenes and write every file of the world into ``out`` (atomically, as a folder)."""
    from tqdm.auto import tqdm

    if images < MIN_SCENES:
        from vb_probe.errors import VbProbeError

        raise VbProbeError(f"--scenes {images}: the world needs at least {MIN_SCENES} scenes (train, val and test "
                           "splits)")
    started = time.time()
    generator = WorldGenerator(seed)
    scenes = [generator.scene(i) for i in tqdm(range(images), desc="scenes", disable=not progress, leave=False)]
    n_val = n_test = max(1, images // 10)
    splits = {"train": scenes[: images - n_val - n_test], "val": scenes[images - n_val - n_test: images - n_test],
              "test": scenes[images - n_test:]}
    out = Path(out)
    with atomic_dir(out) as tmp:
        flickr = tmp / "flickr30k"
        (flickr / "Sentences").mkdir(parents=True)
        (flickr / "Annotations").mkdir()
        parses: list[Parse] = []
        for scene in scenes:
            boxes = {o.entity_id: np.stack(o.boxes) for o in scene.objects}
            nobox = {scene.crowd_id} if scene.crowd_id is not None else set()
            annotation = Annotation(scene.image_id, scene.width, scene.height, boxes, {scene.setting_id}, nobox)
            (flickr / "Annotations" / f"{scene.image_id}.xml").write_text(format_annotation(annotation))
            lines = []
            for k, (words, phrases, heads, rels) in enumerate(scene.captions):
                lines.append(format_sentence(words, phrases))
                parses.append(Parse(f"{scene.image_id}_{k}", tuple(words), tuple(heads), tuple(rels)))
            (flickr / "Sentences" / f"{scene.image_id}.txt").write_text("\n".join(lines) + "\n")
        for name, members in splits.items():
            (flickr / f"{name}.txt").write_text("\n".join(s.image_id for s in members) + "\n")
        (tmp / "parses.conllu").write_text(to_conllu(parses))
        regions = [s.regions for s in scenes]
        write_tsv(tmp / "features.tsv", regions)
        if hdf5:
            write_hdf5(tmp / "features.h5", regions)
        _write_karpathy(tmp / "dataset_coco.json", splits)
        _write_refcoco_and_visual_genome(tmp, splits)
        write_task_files(tmp, splits, np.random.default_rng([seed, 2]))
        _write_vocab(tmp / "tokenizer", tmp)
        if render:
            _render(tmp / "images", scenes)
        stats = world_stats(scenes, time.time() - started)
        write_json(tmp / "world.json", {"seed": seed, "images": images, "feature_dim": FEATURE_DIM,
                                         "splits": {k: len(v) for k, v in splits.items()},
                                         "stats": {k: v for k, v in stats.__dict__.items() if k != "seconds"}})
    return stats


def _write_karpathy(path: Path, splits: dict[str, list[Scene]]) -> None:
    images = []
    for split, members in splits.items():
        for scene in members:
            sentences = [{"raw": " ".join(w[:-1]).capitalize() + ".", "tokens": [t for t in w if t != "."]}
                         for w, *_ in scene.captions]
            images.append({"filename": f"{scene.image_id}.png", "cocoid": int(scene.image_id), "imgid": len(images),
                           "split": split, "sentences": sentences})
    path.write_text(json.dumps({"dataset": "vb-probe-world", "images": images}))


def _write_refcoco_and_visual_genome(out: Path, splits: dict[str, list[Scene]]) -> None:
    """The world's objects as RefCOCO refs (``refcoco/``: refs(unc).p and instances.json) and Visual Genome regions
    and relationships (``visual_genome/``), from its captions. Every phrase naming a one-box object is one
    referring expression of that object and one region description with its box, in the same order in both, so
    the two layouts ask the same questions of the same scenes; the captions' verbs and prepositions between two
    such objects are Visual Genome's relationships. Splits: the world's own (RefCOCO's unc names its test halves
    testA and testB)."""
    from vb_probe.data.refcoco import write_refcoco
    from vb_probe.data.visual_genome import write_visual_genome

    images, objects, refs = [], [], []
    regions: dict[str, list[dict]] = {}
    relationships: dict[str, list[dict]] = {}
    vg_splits: dict[str, list[str]] = {}
    for split, members in splits.items():
        vg_splits[split] = [scene.image_id for scene in members]
        for position, scene in enumerate(members):
            unc = split if split != "test" else ("testA" if position < (len(members) + 1) // 2 else "testB")
            image_id = int(scene.image_id)
            images.append({"id": image_id, "image_id": image_id, "width": scene.width, "height": scene.height,
                           "file_name": f"{scene.image_id}.png"})
            single = {o.entity_id: o for o in scene.objects if len(o.boxes) == 1}
            mentions: dict[int, list[tuple[str, ...]]] = {}
            for _, phrases, _, _ in scene.captions:
                for phrase in phrases:
                    if phrase.entity_id in single and phrase.words not in mentions.setdefault(phrase.entity_id, []):
                        mentions[phrase.entity_id].append(phrase.words)
            regions[scene.image_id], relationships[scene.image_id] = [], []
            for entity_id, expressions in mentions.items():
                box = single[entity_id].boxes[0]
                ann_id = len(objects) + 1
                objects.append({"id": ann_id, "image_id": image_id, "box": box})
                refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": image_id, "split": unc,
                             "sentences": expressions, "file_name": f"{scene.image_id}.png"})
                for words in expressions:
                    regions[scene.image_id].append({"region_id": sum(len(r) for r in regions.values()) + 1,
                                                    "phrase": " ".join(words), "box": box})
            seen = set()
            for words, phrases, heads, rels in scene.captions:
                owner = {i: p for p in phrases for i in range(p.first_word_index, p.last_word_index + 1)}
                subjects = {heads[i] - 1: owner[i] for i, r in enumerate(rels) if r == "nsubj" and i in owner}
                for i, rel in enumerate(rels):
                    if rel not in ("dobj", "pobj") or i not in owner:
                        continue
                    link = heads[i] - 1  # the verb (dobj) or the preposition (pobj)
                    verb = link if rel == "dobj" else heads[link] - 1
                    subject, target = subjects.get(verb), owner[i]
                    if subject is None or subject.entity_id not in single or target.entity_id not in single:
                        continue
                    key = (subject.entity_id, words[link], target.entity_id)
                    if key in seen:
                        continue
                    seen.add(key)
                    relationships[scene.image_id].append({
                        "relationship_id": sum(len(r) for r in relationships.values()) + 1, "predicate": words[link],
                        **{role: {"object_id": image_id * 100 + p.entity_id, "name": p.words[-1],
                                  "box": single[p.entity_id].boxes[0]}
                           for role, p in (("subject", subject), ("object", target))}})
    write_refcoco(out / "refcoco", images, objects, refs)
    write_visual_genome(out / "visual_genome", [{"image_id": i["id"], "width": i["width"], "height": i["height"]}
                                                for i in images], regions, relationships, vg_splits)


def world_texts(folder: Path) -> list[str]:
    """Every caption and task sentence of a written world (the tokenizer's training text)."""
    texts = []
    for path in sorted((folder / "flickr30k" / "Sentences").glob("*.txt")):

        texts.extend(" ".join(c.words) for c in read_sentences(path))
    for path in sorted(folder.glob("tasks/**/*.txt")):
        texts.extend(path.read_text().splitlines())
    return texts


def _write_vocab(out: Path, world_folder: Path) -> None:
    """A WordPiece vocabulary trained on the world's text with the ``tokenizers`` library."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = world_texts(world_folder) + list(ALL_NOUNS) + list(PLURALS.values())
    trainer = trainers.WordPieceTrainer(vocab_size=5000, min_frequency=1,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.train_from_iterator(texts, trainer)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # With a vocabulary this large every word of the world becomes a whole piece; the intermediate pieces
    # depend on how the trainer breaks ties between equally frequent pairs (it varies between runs), so
    # only whole words and single characters are kept: the same file for the same seed.
    words = {w for text in texts for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text))}
    learned = sorted(t for t in tokenizer.get_vocab() if t not in specials and (t in words or len(t.lstrip("#")) == 1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(specials + learned) + "\n")
    # transformers builds the fast BERT tokenizer (lower-casing, [CLS]/[SEP] template) from vocab.txt
    BertTokenizerFast.from_pretrained(str(out), do_lower_case=True).save_pretrained(str(out))


# Each noun its own look, so that a model reading pixels can tell what an object is (a detector's features carry
# the noun; pixels must show it): an outline shape and a band across it, 5 × 4 looks for the 18 nouns.
SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "hexagon")
MARKS = ("none", "horizontal", "vertical", "cross")
LOOKS = {noun: (SHAPES[i % len(SHAPES)], MARKS[i // len(SHAPES)]) for i, noun in enumerate(ALL_NOUNS)}


def _outline(shape: str, box) -> list[tuple[float, float]] | None:
    """The polygon of ``shape`` inside ``box`` (None: an ellipse or rectangle, drawn by PIL's own calls)."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if shape == "triangle":
        return [(cx, y1), (x2, y2), (x1, y2)]
    if shape == "diamond":
        return [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
    if shape == "hexagon":
        q = (x2 - x1) / 4
        return [(x1 + q, y1), (x2 - q, y1), (x2, cy), (x2 - q, y2), (x1 + q, y2), (x1, cy)]
    return None


def _render(folder: Path, scenes: list[Scene]) -> None:
    """A PNG per scene: each object its noun's shape filled in its colour with its noun's band, labelled; settings
    tint the background."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    tints = {"park": (200, 230, 190), "street": (215, 215, 215), "beach": (240, 225, 180), "field": (220, 235, 170)}
    rgb = {"red": (210, 40, 40), "blue": (40, 80, 210), "green": (40, 160, 60), "yellow": (235, 205, 40),
           "black": (30, 30, 30), "white": (250, 250, 250), "orange": (240, 140, 30), "purple": (140, 60, 170)}
    dark = ("black", "blue", "purple", "red", "green")
    for scene in scenes:
        image = Image.new("RGB", (scene.width, scene.height), tints[scene.setting])
        draw = ImageDraw.Draw(image)
        for obj in sorted(scene.objects, key=lambda o: -float((o.boxes[0][2] - o.boxes[0][0]) * (o.boxes[0][3] - o.boxes[0][1]))):
            shape, mark = LOOKS[obj.noun]
            contrast = (255, 255, 255) if obj.colour in dark else (0, 0, 0)
            for box in obj.boxes:
                box = [float(v) for v in box]
                polygon = _outline(shape, box)
                if polygon is not None:
                    draw.polygon(polygon, fill=rgb[obj.colour], outline=(0, 0, 0), width=2)
                else:
                    (draw.ellipse if shape == "ellipse" else draw.rectangle)(box, fill=rgb[obj.colour],
                                                                             outline=(0, 0, 0), width=2)
                x1, y1, x2, y2 = box
                band_w, band_h = (x2 - x1) / 5, (y2 - y1) / 5  # thick enough to survive ViLT's down-scaling
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                if mark in ("horizontal", "cross"):
                    draw.rectangle([x1 + band_w, cy - band_h / 2, x2 - band_w, cy + band_h / 2], fill=contrast)
                if mark in ("vertical", "cross"):
                    draw.rectangle([cx - band_w / 2, y1 + band_h, cx + band_w / 2, y2 - band_h], fill=contrast)
                label = obj.noun + (f" ({obj.action})" if obj.action else "")
                draw.text((x1 + 3, y1 + 2), label, fill=contrast)
        image.save(folder / f"{scene.image_id}.png", optimize=False)
