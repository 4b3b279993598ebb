"""Downstream task files of the built-in world, in the real formats of VQA v2, NLVR2 and VCR.

* VQA v2: ``tasks/vqa/v2_OpenEnded_mscoco_<split>_questions.json`` and ``v2_mscoco_<split>_annotations.json``
  (10 human answers each, a few of them noisy, as real annotators are).
* NLVR2: ``tasks/nlvr2/{train,dev,test1}.json`` (jsonl: identifier, sentence, label "True"/"False"); the two
  images of statement ``<split>-<set>-<pair>-<k>`` are ``<split>-<set>-<pair>-img0`` / ``-img1``, as in NLVR2's
  files, with their regions in ``tasks/nlvr2/features.tsv``. As in NLVR2, each statement is true of one pair of
  its set and false of the other.
* VCR: ``tasks/vcr/{train,val,test}.jsonl`` (objects, question/answer/rationale token lists with object tags
  as ``[i]`` lists, labels) and ``tasks/vcr/metadata/<image>.json`` (boxes with scores, names, size); region
  features of the tagged objects in ``tasks/vcr/features.tsv``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.world.scenes import COLOURS, PLURALS
from vb_probe.data.features import Regions, write_tsv
from vb_probe.metrics.boxes import iou

GERUND = {"throws": "throwing", "holds": "holding", "kicks": "kicking", "carries": "carrying", "rides": "riding",
          "pushes": "pushing", "chases": "chasing", "bites": "biting"}
VQA_SPLIT_NAMES = {"train": "train", "val": "val", "test": "test"}
NLVR2_SPLIT_NAMES = {"train": "train", "val": "dev", "test": "test1"}
NLVR2_TRAIN_STATEMENTS = 4


def _noisy_answers(rng, truth: str, alternatives: list[str]) -> list[dict]:
    answers = []
    for i in range(10):
        answer = truth if (rng.random() > 0.15 or not alternatives) else str(rng.choice(alternatives))
        answers.append({"answer": answer, "answer_confidence": "yes", "answer_id": i + 1})
    return answers


def _vqa(scenes, rng, question_id_start: int):

    questions, annotations = [], []
    qid = question_id_start
    for scene in scenes:
        nouns = [o.noun for o in scene.objects]
        single = [o for o in scene.objects if len(o.boxes) == 1]
        obj = single[int(rng.integers(len(single)))]
        counts = {}
        for o in scene.objects:
            counts[o.noun] = counts.get(o.noun, 0) + len(o.boxes)
        counted = list(counts)[int(rng.integers(len(counts)))]
        agent = scene.objects[0]
        absent = [n for n in PLURALS if n not in nouns]
        probe = str(rng.choice(absent)) if rng.random() < 0.5 else str(rng.choice(nouns))
        items = [
            (f"what color is the {obj.noun} ?", obj.colour, list(COLOURS), "other", "what color is the"),
            (f"how many {PLURALS[counted]} are there ?", str(counts[counted]), ["1", "2", "3"], "number", "how many"),
            (f"what is the {agent.noun} doing ?", GERUND[agent.action], list(GERUND.values()), "other", "what is the"),
            (f"is there a {probe} ?", "yes" if probe in nouns else "no", ["yes", "no"], "yes/no", "is there a"),
        ]
        for question, answer, alternatives, answer_type, question_type in items:
            qid += 1
            questions.append({"image_id": int(scene.image_id), "question": question, "question_id": qid})
            annotations.append({"question_id": qid, "image_id": int(scene.image_id),
                                "answers": _noisy_answers(rng, answer, alternatives),
                                "multiple_choice_answer": answer, "answer_type": answer_type,
                                "question_type": question_type})
    return questions, annotations, qid


def _has(scene, noun: str, colour: str | None = None) -> bool:
    return any(o.noun == noun and (colour is None or o.colour == colour) for o in scene.objects)


def _nlvr2_statement(scene, rng) -> tuple[int, str, str | None]:
    """A statement drawn from a scene's objects: (kind, noun, colour or None). Kinds: 0/1 the left/right image
    contains a (colour) noun, 2 both images contain a noun, 3 one image contains two of a noun (35/35/20/10%)."""

    o = scene.objects[int(rng.integers(len(scene.objects)))]
    noun = o.noun if rng.random() < 0.7 else str(rng.choice(list(PLURALS)))
    kind = int(rng.choice(4, p=[0.35, 0.35, 0.2, 0.1]))
    colour = None
    if kind < 2 and rng.random() < 0.3:  # sometimes a colour too (a harder, attribute-bound statement)
        colour = o.colour if rng.random() < 0.6 else str(rng.choice(COLOURS))
    return kind, noun, colour


def _nlvr2_sentence(kind: int, noun: str, colour: str | None) -> str:

    described = f"{colour} {noun}" if colour else noun
    return [f"the left image contains a {described} .", f"the right image contains a {described} .",
            f"both images contain a {noun} .", f"one image contains two {PLURALS[noun]} ."][kind]


def _nlvr2_truth(kind: int, noun: str, colour: str | None, left, right) -> bool:
    if kind == 0:
        return _has(left, noun, colour)
    if kind == 1:
        return _has(right, noun, colour)
    if kind == 2:
        return _has(left, noun) and _has(right, noun)
    return any(len(x.boxes) == 2 and x.noun == noun for x in left.objects + right.objects)


def _nlvr2(scenes, rng, split_name: str, n_sets: int, per_set: int):
    """NLVR2's design: each set has two image pairs and ``per_set`` statements, each true of one pair and false
    of the other, so the text alone says nothing (a text-only model scores 0.5). Identifiers
    ``<split>-<set>-<pair>-<statement>``; a pair's images are ``<split>-<set>-<pair>-img0/img1``."""
    lines, regions = [], []
    for number in range(n_sets):
        pairs = [tuple(scenes[int(i)] for i in rng.choice(len(scenes), 2, replace=len(scenes) < 2))
                 for _ in range(2)]
        seen = set()
        for k in range(per_set):
            for _ in range(100):  # until the statement separates the two pairs (almost always within a few)
                spec = _nlvr2_statement(pairs[int(rng.integers(2))][int(rng.integers(2))], rng)
                sentence = _nlvr2_sentence(*spec)
                truths = [_nlvr2_truth(*spec, left, right) for left, right in pairs]
                if truths[0] != truths[1] and sentence not in seen:
                    break
            seen.add(sentence)
            for p, ((left, right), truth) in enumerate(zip(pairs, truths)):
                lines.append(json.dumps({"identifier": f"{split_name}-{number}-{p}-{k}", "sentence": sentence,
                                         "label": "True" if truth else "False", "directory": "0",
                                         "left_url": f"{left.image_id}.png", "right_url": f"{right.image_id}.png",
                                         "writer": "world", "synset": spec[1], "query": spec[1]}))
        for p, pair in enumerate(pairs):
            for side, scene in zip(("img0", "img1"), pair):
                r = scene.regions
                regions.append(Regions(f"{split_name}-{number}-{p}-{side}", r.boxes, r.features, r.confidences,
                                       r.image_w, r.image_h))
    return lines, regions


def _vcr(scenes, rng, split_name: str, folder: Path):
    lines, regions = [], []
    for number, scene in enumerate(scenes):
        objects = [o for o in scene.objects if len(o.boxes) == 1]
        names = [o.group if o.group != "people" else "person" for o in objects]
        boxes = np.stack([o.boxes[0] for o in objects])
        # the feature of each tagged object: its best-covering detector region
        overlaps = iou(boxes, scene.regions.boxes)
        chosen = overlaps.argmax(axis=1)
        regions.append(Regions(scene.image_id, boxes, scene.regions.features[chosen],
                               np.ones(len(objects), np.float32), scene.regions.image_w, scene.regions.image_h))
        agent, target = 0, 1
        verbs = list(GERUND)
        correct_verb = objects[agent].action
        wrong_verbs = [v for v in verbs if v != correct_verb]
        answer_verbs = [correct_verb] + [str(v) for v in rng.choice(wrong_verbs, 3, replace=False)]
        order = rng.permutation(4)
        answers = [[[agent], "is", GERUND[answer_verbs[i]], "the", objects[target].noun, "."] for i in order]
        answer_label = int(np.flatnonzero(order == 0)[0])
        colours = [objects[target].colour] + [c for c in ("red", "blue", "green", "yellow", "black", "white")
                                              if c != objects[target].colour][:3]
        r_order = rng.permutation(4)
        rationales = [[[target], "is", colours[i], "and", "near", [agent], "."] for i in r_order]
        rationale_label = int(np.flatnonzero(r_order == 0)[0])
        metadata = {"boxes": [[*map(float, b), 1.0] for b in boxes], "names": names,
                    "width": scene.width, "height": scene.height}
        (folder / "metadata" / f"{scene.image_id}.json").write_text(json.dumps(metadata))
        lines.append(json.dumps({
            "annot_id": f"{split_name}-{number}", "img_fn": f"world/{scene.image_id}.png",
            "metadata_fn": f"world/{scene.image_id}.json", "objects": names,
            "question": ["what", "is", [agent], "doing", "to", "the", objects[target].noun, "?"],
            "answer_choices": answers, "answer_label": answer_label,
            "rationale_choices": rationales, "rationale_label": rationale_label}))
    return lines, regions


def write_task_files(out: Path, splits: dict[str, list], rng: np.random.Generator) -> None:
    """Write VQA v2, NLVR2 and VCR files for the world's train/val/test scenes under ``out/tasks``."""
    vqa, nlvr2, vcr = out / "tasks" / "vqa", out / "tasks" / "nlvr2", out / "tasks" / "vcr"
    for folder in (vqa, nlvr2, vcr / "metadata"):
        folder.mkdir(parents=True, exist_ok=True)
    qid = 0
    nlvr2_regions, vcr_regions, texts = [], [], []
    for split, scenes in splits.items():
        questions, annotations, qid = _vqa(scenes, rng, qid)
        name = VQA_SPLIT_NAMES[split]
        (vqa / f"v2_OpenEnded_mscoco_{name}_questions.json").write_text(
            json.dumps({"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": name, "questions": questions}))
        (vqa / f"v2_mscoco_{name}_annotations.json").write_text(
            json.dumps({"data_type": "mscoco", "data_subtype": name, "annotations": annotations}))
        texts += [q["question"] for q in questions] + [a["multiple_choice_answer"] for a in annotations]
        # training: a set per scene, NLVR2_TRAIN_STATEMENTS statements on each of its 2 pairs; held-out: 1.5 sets
        # a scene, one statement each (300 statements for 100 scenes, accuracy read to about ±0.03)
        held_out = split != "train"
        sets = max(10, len(scenes) * 3 // 2 if held_out else len(scenes))
        lines, regions = _nlvr2(scenes, rng, NLVR2_SPLIT_NAMES[split], sets, 1 if held_out else NLVR2_TRAIN_STATEMENTS)
        (nlvr2 / f"{NLVR2_SPLIT_NAMES[split]}.json").write_text("\n".join(lines) + "\n")
        nlvr2_regions += regions
        texts += [json.loads(line)["sentence"] for line in lines]
        lines, regions = _vcr(scenes, rng, split, vcr)
        (vcr / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        for line in lines[:50]:
            entry = json.loads(line)
            for tokens in [entry["question"]] + entry["answer_choices"] + entry["rationale_choices"]:
                texts.append(" ".join(t for t in tokens if isinstance(t, str)))
        vcr_regions += regions
    write_tsv(nlvr2 / "features.tsv", nlvr2_regions)
    write_tsv(vcr / "features.tsv", vcr_regions)
    (out / "tasks" / "texts.txt").write_text("\n".join(texts) + "\n")
