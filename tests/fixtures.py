"""A small Flickr30K-Entities-format set with features, parses, a tokenizer and a tiny checkpoint, written
by the tests into a temporary folder. Random but seeded; the semantics cases are placed on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from vb_probe.data.features import Regions, write_hdf5, write_tsv
from vb_probe.data.flickr30k import Annotation, Phrase, format_annotation, format_sentence
from vb_probe.data.parses import Parse, to_conllu

SUBJECTS = ["man", "woman", "dog", "child"]
OBJECTS = ["ball", "frisbee", "stick", "hat"]
COLOURS = ["red", "blue", "green"]
VERBS = ["throws", "holds", "catches"]
VOCAB_WORDS = ["a", "the", "in", "on", "near", "park", "today", "is", ".", "big", "##s", "'", "s"] + \
    SUBJECTS + OBJECTS + COLOURS + VERBS


def write_vocab(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + VOCAB_WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return len(vocab)


def write_dataset(root: Path, n_images: int = 6, dim: int = 12, seed: int = 0, with_conf: bool = True) -> dict:
    """Writes <root>/flickr (Sentences, Annotations, splits), features.tsv/.h5 and parses.conllu."""
    rng = np.random.default_rng(seed)
    flickr = root / "flickr"
    (flickr / "Sentences").mkdir(parents=True, exist_ok=True)
    (flickr / "Annotations").mkdir(parents=True, exist_ok=True)
    all_regions, parses, ids = [], [], []
    for i in range(n_images):
        image_id = str(500 + i)
        ids.append(image_id)
        w, h = 400, 300
        subj_box = np.array([[20 + 5 * i, 30, 150, 260]], np.float32)
        obj_box = np.array([[200, 100 + 3 * i, 260, 160]], np.float32)
        second = np.array([[280, 40, 380, 120]], np.float32)
        annotation = Annotation(image_id, w, h, boxes={1: subj_box, 2: obj_box, 3: np.concatenate([obj_box, second])},
                                scene={4}, nobox={5})
        (flickr / "Annotations" / f"{image_id}.xml").write_text(format_annotation(annotation))
        subj, obj, colour, verb = (SUBJECTS[i % 4], OBJECTS[i % 4], COLOURS[i % 3], VERBS[i % 3])
        captions = [
            # a man throws a red ball in the park today .
            (["a", subj, verb, "a", colour, obj, "in", "the", "park", "today", "."],
             [Phrase(0, ("a", subj), 1, ("people",)), Phrase(3, ("a", colour, obj), 2, ("other",)),
              Phrase(7, ("the", "park"), 4, ("scene",)), Phrase(9, ("today",), 0, ("notvisual",))],
             [2, 3, 0, 6, 6, 3, 3, 9, 7, 3, 3],
             ["det", "nsubj", "ROOT", "det", "amod", "dobj", "prep", "det", "pobj", "npadvmod", "punct"]),
            # the big man 's hat is near the balls .
            (["the", "big", subj, "'s", obj, "is", "near", "the", obj + "s", "."],
             [Phrase(0, ("the", "big", subj, "'s"), 1, ("people",)), Phrase(4, (obj,), 5, ("clothing",)),
              Phrase(7, ("the", obj + "s"), 3, ("other",))],
             [3, 3, 5, 3, 6, 0, 6, 9, 7, 6],
             ["det", "amod", "poss", "case", "nsubj", "ROOT", "prep", "det", "pobj", "punct"]),
        ]
        lines = []
        for index, (words, phrases, heads, rels) in enumerate(captions):
            lines.append(format_sentence(words, phrases))
            parses.append(Parse(f"{image_id}_{index}", tuple(words), tuple(heads), tuple(rels)))
        (flickr / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n")
        n = int(rng.integers(5, 9))
        boxes = [subj_box[0] + rng.normal(0, 4, 4), obj_box[0] + rng.normal(0, 2, 4), second[0]]
        while len(boxes) < n:
            xy = rng.uniform(0, 250, 2)
            boxes.append(np.concatenate([xy, xy + rng.uniform(20, 120, 2)]))
        boxes = np.clip(np.stack(boxes).astype(np.float32), 0, [w, h, w, h])
        order = rng.permutation(n)
        all_regions.append(Regions(image_id, boxes[order], rng.normal(size=(n, dim)).astype(np.float32),
                                   rng.uniform(size=n).astype(np.float32) if with_conf else None, w, h))
    (flickr / "test.txt").write_text("\n".join(ids[: n_images // 2 + 1]) + "\n")
    (flickr / "val.txt").write_text("\n".join(ids[n_images // 2 + 1:]) + "\n")
    (flickr / "train.txt").write_text("\n".join(ids) + "\n")
    write_tsv(root / "features.tsv", all_regions)
    write_hdf5(root / "features.h5", all_regions)
    (root / "parses.conllu").write_text(to_conllu(parses))
    return {"flickr": flickr, "tsv": root / "features.tsv", "h5": root / "features.h5",
            "parses": root / "parses.conllu", "ids": ids, "regions": {r.image_id: r for r in all_regions}}


def write_checkpoint(folder: Path, dim: int = 12, seed: int = 0, layers: int = 3, heads: int = 4) -> Path:
    """A tiny transformers VisualBERT checkpoint (saved by transformers itself) with its tokenizer."""
    from transformers import BertTokenizerFast, VisualBertConfig, VisualBertModel

    vocab_dir = folder.parent / (folder.name + "_vocab")
    vocab_size = write_vocab(vocab_dir)
    config = VisualBertConfig(vocab_size=vocab_size, hidden_size=16 * heads // 4 * 2, num_hidden_layers=layers,
                              num_attention_heads=heads, intermediate_size=64, visual_embedding_dim=dim,
                              max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(seed)
    model = VisualBertModel(config)
    with torch.no_grad():  # sharpen attention so that heads differ clearly
        for layer in model.encoder.layer:
            layer.attention.self.query.weight.mul_(25.0)
    model.save_pretrained(folder)
    BertTokenizerFast.from_pretrained(str(vocab_dir)).save_pretrained(str(folder))
    return folder


def write_probe_set(root: Path, n_images: int) -> dict:
    """A dataset (:func:`write_dataset`) and a tiny checkpoint for it under ``root`` (``data["ckpt"]``)."""
    data = write_dataset(root, n_images=n_images)
    data["ckpt"] = write_checkpoint(root / "ckpt")
    return data


def lay_out_hub_cache(root, repo_id: str, files: dict, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """The hub cache's own layout: models--<org>--<name>/{blobs, snapshots/<commit>, refs/main}."""
    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, source in files.items():
        blob = repo / "blobs" / name.replace(".", "_")
        shutil.copy(source, blob)
        (snapshot / name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
