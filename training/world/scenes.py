"""The built-in world: scenes with known ground truth, written in the real formats users have.

Each scene has an agent (person or animal) doing an action to a target object, a few more objects, a
setting (a ``scene`` entity), sometimes a group of two (one entity, two boxes) and a crowd (``nobox``).
Five captions a scene, phrased differently, mark entity phrases as Flickr30K Entities does (with
``notvisual`` phrases too) and come with gold dependency parses (ClearNLP labels, as spaCy's).

Evidence sits where a detector would see it: a region's feature vector carries its object's category and
colour (scaled by how well the box covers the object, plus noise), the action (pose) shows only in the
agent's regions, size shows only in box geometry, and prepositions (above / below / beside) are decided
by where the boxes were placed at random, so the nouns do not predict them. The last 6 feature
dimensions are the box's spatial features (x1/W, y1/H, x2/W, y2/H, w/W, h/H), as in real Flickr30K
features. Regions are like a detector's output: jittered true boxes, near misses, duplicates and
background boxes, 10–100 per image, in random order, with confidences unrelated to the captions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from vb_probe.data.features import Regions
from vb_probe.data.flickr30k import Phrase
from vb_probe.metrics.boxes import iou, region_hits
from vb_probe.metrics.grounding import baseline_scores

CATEGORIES: dict[str, tuple[str, ...]] = {
    "people": ("man", "woman", "boy", "girl"),
    "animals": ("dog", "cat", "horse", "bird"),
    "vehicles": ("car", "bus", "bike", "truck"),
    "other": ("ball", "frisbee", "kite", "bag", "umbrella", "box"),
}
SYNONYMS = {"man": ("man", "guy"), "woman": ("woman", "lady"), "dog": ("dog", "puppy"), "boy": ("boy", "kid"),
            "bike": ("bike", "bicycle"), "bag": ("bag", "backpack")}
PLURALS = {"man": "men", "woman": "women", "boy": "boys", "girl": "girls", "dog": "dogs", "cat": "cats",
           "horse": "horses", "bird": "birds", "car": "cars", "bus": "buses", "bike": "bikes", "truck": "trucks",
           "ball": "balls", "frisbee": "frisbees", "kite": "kites", "bag": "bags", "umbrella": "umbrellas",
           "box": "boxes"}
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple")
ACTIONS: dict[str, tuple[str, ...]] = {  # verb → what it can act on
    "throws": ("ball", "frisbee"), "holds": ("bag", "umbrella", "kite", "ball", "box"),
    "kicks": ("ball", "box"), "carries": ("bag", "box", "umbrella"), "rides": ("horse", "bike"),
    "pushes": ("bike", "box", "car"), "chases": ("ball", "cat", "bird", "frisbee"), "bites": ("ball", "bag", "frisbee"),
}
AGENT_VERBS = {"people": ("throws", "holds", "kicks", "carries", "rides", "pushes"),
               "animals": ("chases", "bites", "carries")}
SETTINGS = ("park", "street", "beach", "field")
NOTVISUAL = (("the", "camera"), ("a", "picture"))
ALL_NOUNS = tuple(n for group in CATEGORIES.values() for n in group)
SEMANTIC_DIM = 122
SPATIAL_DIM = 6
FEATURE_DIM = SEMANTIC_DIM + SPATIAL_DIM


@dataclass
class WorldObject:
    entity_id: int
    noun: str
    group: str
    colour: str
    big: bool
    boxes: list[np.ndarray]  # one box, or two for a group entity
    action: str | None = None


@dataclass
class Scene:
    image_id: str
    width: int
    height: int
    objects: list[WorldObject]
    setting: str
    setting_id: int
    crowd_id: int | None
    captions: list[tuple[list[str], list[Phrase], list[int], list[str]]] = field(default_factory=list)
    regions: Regions | None = None
    region_owner: np.ndarray | None = None  # entity id that each region mostly covers, 0 for background


class Prototypes:
    """Random directions for each kind of evidence (fixed by the seed)."""

    def __init__(self, rng: np.random.Generator):
        def unit(n):
            v = rng.normal(size=(n, SEMANTIC_DIM))
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        self.noun = dict(zip(ALL_NOUNS, unit(len(ALL_NOUNS))))
        self.colour = dict(zip(COLOURS, unit(len(COLOURS))))
        self.action = dict(zip(ACTIONS, unit(len(ACTIONS))))
        self.background = unit(1)[0]


def _place(rng, width, height, scale, taken, tries=30):
    """A box of about ``scale`` of the image's side, overlapping earlier boxes little."""
    best = None
    for _ in range(tries):
        w = width * scale * rng.uniform(0.8, 1.25)
        h = height * scale * rng.uniform(0.8, 1.25)
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box = np.array([x1, y1, x1 + w, y1 + h], dtype=np.float32)
        worst = max((iou(box[None], t[None])[0, 0] for t in taken), default=0.0)
        if best is None or worst < best[0]:
            best = (worst, box)
        if worst < 0.05:
            break
    return best[1]


def _jitter(rng, box, width, height, target_iou_low, target_iou_high, tries=40):
    """A box near ``box`` whose IoU with it falls in [low, high)."""
    w, h = box[2] - box[0], box[3] - box[1]
    candidate = box
    for _ in range(tries):
        spread = rng.uniform(0.03, 0.45)
        dx1, dy1, dx2, dy2 = rng.normal(0, spread, 4) * np.array([w, h, w, h])
        candidate = np.array([box[0] + dx1, box[1] + dy1, box[2] + dx2, box[3] + dy2], dtype=np.float32)
        candidate = np.clip(candidate, 0, [width, height, width, height]).astype(np.float32)
        if candidate[2] - candidate[0] < 4 or candidate[3] - candidate[1] < 4:
            continue
        value = iou(candidate[None], box[None])[0, 0]
        if target_iou_low <= value < target_iou_high:
            return candidate
    return box.copy() if target_iou_high > 0.99 else candidate


class SentenceBuilder:
    """Words with their gold heads and relations, and the phrases marked on them."""

    def __init__(self):
        self.words: list[str] = []
        self.heads: list[int | None] = []
        self.rels: list[str] = []
        self.phrases: list[Phrase] = []

    def word(self, text: str, head: int | None = None, rel: str = "dep") -> int:
        self.words.append(text)
        self.heads.append(head)
        self.rels.append(rel)
        return len(self.words) - 1

    def attach(self, index: int, head: int | None, rel: str) -> None:
        self.heads[index], self.rels[index] = head, rel

    def noun_phrase(self, det: str | None, adjectives: list[str], noun: str, entity_id: int, types: tuple[str, ...],
                    number: str | None = None) -> int:
        """det (det) + number (nummod) + adjectives (amod) + noun; returns the noun's index."""
        start = len(self.words)
        dependents = []
        if det:
            dependents.append((self.word(det), "det"))
        if number:
            dependents.append((self.word(number), "nummod"))
        for adjective in adjectives:
            dependents.append((self.word(adjective), "amod"))
        noun_index = self.word(noun)
        for index, rel in dependents:
            self.attach(index, noun_index, rel)
        self.phrases.append(Phrase(start, tuple(self.words[start:]), entity_id, types))
        return noun_index

    def build(self) -> tuple[list[str], list[Phrase], list[int], list[str]]:
        assert all(h is not None or r == "ROOT" for h, r in zip(self.heads, self.rels)), "every word has a head"
        heads = [0 if r == "ROOT" else h + 1 for h, r in zip(self.heads, self.rels)]
        return list(self.words), list(self.phrases), heads, list(self.rels)


class WorldGenerator:
    """Deterministic for a seed: the same seed gives byte-identical files."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.prototypes = Prototypes(np.random.default_rng([seed, 0]))

    # ------------------------------------------------------------------ scenes
    def scene(self, index: int) -> Scene:
        rng = np.random.default_rng([self.seed, 1, index])
        width, height = int(rng.integers(400, 641)), int(rng.integers(300, 481))
        taken: list[np.ndarray] = []
        objects: list[WorldObject] = []
        next_id = 1

        def new_object(group: str, noun: str | None = None, count: int = 1) -> WorldObject:
            nonlocal next_id
            noun = noun or str(rng.choice(CATEGORIES[group]))
            big = bool(rng.random() < 0.5)
            scale = {"people": 0.32, "animals": 0.26, "vehicles": 0.36, "other": 0.16}[group] * (1.45 if big else 0.8)
            boxes = []
            for _ in range(count):
                box = _place(rng, width, height, scale, taken)
                taken.append(box)
                boxes.append(box)
            obj = WorldObject(next_id, noun, group, str(rng.choice(COLOURS)), big, boxes)
            next_id += 1
            objects.append(obj)
            return obj

        agent_group = "people" if rng.random() < 0.6 else "animals"
        agent = new_object(agent_group)
        verb = str(rng.choice(AGENT_VERBS[agent_group]))
        agent.action = verb
        target_noun = str(rng.choice(ACTIONS[verb]))
        target_group = next(g for g, nouns in CATEGORIES.items() if target_noun in nouns)
        new_object(target_group, target_noun)
        for _ in range(int(rng.integers(1, 3))):
            new_object(str(rng.choice(list(CATEGORIES))))
        if rng.random() < 0.35:
            new_object(str(rng.choice(["animals", "vehicles", "other"])), count=2)
        setting_id = next_id
        crowd_id = next_id + 1 if rng.random() < 0.3 else None
        scene = Scene(f"{100000 + index}", width, height, objects, str(rng.choice(SETTINGS)), setting_id, crowd_id)
        self._regions(scene, rng)
        scene.captions = [self._caption(scene, rng, k) for k in range(5)]
        return scene

    def _evidence(self, obj: WorldObject, strength: float, rng) -> np.ndarray:
        p = self.prototypes
        vec = 3.0 * p.noun[obj.noun] + 2.0 * p.colour[obj.colour]
        if obj.action:
            vec = vec + 2.0 * p.action[obj.action]
        return strength * vec

    def _regions(self, scene: Scene, rng) -> None:
        w, h = scene.width, scene.height
        boxes, owners, semantics = [], [], []
        for obj in scene.objects:
            for true_box in obj.boxes:
                specs = [(0.7, 1.0)] + [(0.5, 0.9)] * int(rng.integers(0, 3)) + [(0.25, 0.5)] * int(rng.integers(0, 3))
                if rng.random() < 0.3:
                    specs.append((0.92, 1.0))  # a duplicate
                for low, high in specs:
                    box = _jitter(rng, true_box, w, h, low, high)
                    cover = iou(box[None], true_box[None])[0, 0]
                    boxes.append(box)
                    owners.append(obj.entity_id)
                    semantics.append(self._evidence(obj, 0.4 + 0.6 * cover, rng))
        n_background = int(rng.integers(max(3, 10 - len(boxes)), 16))
        for _ in range(n_background):
            bw, bh = rng.uniform(0.08, 0.6) * w, rng.uniform(0.08, 0.6) * h
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            box = np.array([x1, y1, x1 + bw, y1 + bh], dtype=np.float32)
            vec = 1.5 * self.prototypes.background
            for obj in scene.objects:  # a detector's background box still sees what it overlaps
                for true_box in obj.boxes:
                    overlap = iou(box[None], true_box[None])[0, 0]
                    vec = vec + 0.5 * overlap * self._evidence(obj, 1.0, rng)
            boxes.append(box)
            owners.append(0)
            semantics.append(vec)
        boxes_arr = np.stack(boxes).astype(np.float32)
        sem = np.stack(semantics) + rng.normal(0, 0.5, (len(boxes), SEMANTIC_DIM))
        spatial = np.concatenate([
            boxes_arr / np.array([w, h, w, h], np.float32),
            ((boxes_arr[:, 2] - boxes_arr[:, 0]) / w)[:, None],
            ((boxes_arr[:, 3] - boxes_arr[:, 1]) / h)[:, None]], axis=1)
        features = np.concatenate([sem, spatial], axis=1).astype(np.float32)
        order = rng.permutation(len(boxes))
        confidences = rng.uniform(0.2, 1.0, len(boxes)).astype(np.float32)  # unrelated to the captions
        scene.regions = Regions(scene.image_id, boxes_arr[order], features[order], confidences, float(w), float(h))
        scene.region_owner = np.array(owners)[order]

    # ------------------------------------------------------------------ captions
    def _mention(self, s: SentenceBuilder, obj: WorldObject, rng, first: bool) -> int:
        noun = str(rng.choice(SYNONYMS.get(obj.noun, (obj.noun,))))
        types = (obj.group,)
        if len(obj.boxes) == 2:  # a group entity: one phrase, two boxes
            adjectives = [obj.colour] if rng.random() < 0.5 else []
            return s.noun_phrase(None, adjectives, PLURALS[obj.noun], obj.entity_id, types, number="two")
        adjectives = []
        if rng.random() < 0.45:
            adjectives.append("big" if obj.big else "small")
        if rng.random() < 0.7:
            adjectives.append(obj.colour)
        det = "a" if first or rng.random() < 0.5 else "the"
        if det == "a" and (adjectives or [noun])[0][0] in "aeiou":
            det = "an"
        return s.noun_phrase(det, adjectives, noun, obj.entity_id, types)

    def _preposition(self, a: WorldObject, b: WorldObject) -> str:
        """Decided by the boxes alone: above / below when the vertical gap dominates, else beside."""
        ca = (a.boxes[0][:2] + a.boxes[0][2:]) / 2
        cb = (b.boxes[0][:2] + b.boxes[0][2:]) / 2
        dx, dy = cb - ca
        if abs(dy) > abs(dx):
            return "above" if dy > 0 else "below"
        return "beside"

    def _caption(self, scene: Scene, rng, k: int):
        agent, target = scene.objects[0], scene.objects[1]
        others = scene.objects[2:]
        s = SentenceBuilder()
        template = (k + int(rng.integers(0, 5))) % 5
        if template in (0, 1, 4):  # agent VERB target [PP]
            subj = self._mention(s, agent, rng, True)
            verb = s.word(agent.action, rel="ROOT")
            s.attach(subj, verb, "nsubj")
            obj = self._mention(s, target, rng, True)
            s.attach(obj, verb, "dobj")
            if template == 1 and others:  # … beside a blue car
                other = others[int(rng.integers(len(others)))]
                prep = s.word(self._preposition(agent, other), verb, "prep")
                s.attach(self._mention(s, other, rng, True), prep, "pobj")
            elif template == 4:
                if rng.random() < 0.5:  # … for the camera (notvisual)
                    prep = s.word("for", verb, "prep")
                    words = NOTVISUAL[int(rng.integers(len(NOTVISUAL)))]
                    s.attach(s.noun_phrase(words[0], [], words[1], 0, ("notvisual",)), prep, "pobj")
                elif scene.crowd_id is not None:  # … while a crowd watches (nobox)
                    mark = s.word("while")
                    crowd = s.noun_phrase("a", [], "crowd", scene.crowd_id, ("people",))
                    watches = s.word("watches", verb, "advcl")
                    s.attach(mark, watches, "mark")
                    s.attach(crowd, watches, "nsubj")
            else:  # … in the park (scene)
                prep = s.word("in", verb, "prep")
                s.attach(s.noun_phrase("the", [], scene.setting, scene.setting_id, ("scene",)), prep, "pobj")
        else:  # X is PREP Y
            pool = scene.objects
            a = pool[int(rng.integers(len(pool)))]
            b = pool[(pool.index(a) + 1 + int(rng.integers(len(pool) - 1))) % len(pool)]
            subj = self._mention(s, a, rng, True)
            verb = s.word("are" if len(a.boxes) == 2 else "is", rel="ROOT")
            s.attach(subj, verb, "nsubj")
            prep = s.word(self._preposition(a, b), verb, "prep")
            s.attach(self._mention(s, b, rng, False), prep, "pobj")
        s.word(".", 0, "punct")
        s.attach(len(s.words) - 1, s.rels.index("ROOT"), "punct")
        return s.build()


@dataclass
class WorldStats:
    scenes: int
    phrases: int
    boxes: int
    regions_per_image: tuple[int, int, float]
    arcs: dict[str, int]
    highest_confidence: float
    oracle: float
    random: float
    skipped: dict[str, int]
    seconds: float

    def lines(self) -> list[str]:
        lo, hi, mean = self.regions_per_image
        return [
            f"scenes {self.scenes}, phrases {self.phrases}, gold boxes {self.boxes}, regions per image "
            f"{lo}-{hi} (mean {mean:.1f})",
            "arcs: " + ", ".join(f"{k} {v}" for k, v in sorted(self.arcs.items(), key=lambda kv: -kv[1])[:10]),
            f"phrases without boxes: {self.skipped}",
            f"baselines over phrases with boxes: highest-confidence {self.highest_confidence:.3f}, random "
            f"{self.random:.3f}, oracle {self.oracle:.3f}",
            f"generated in {self.seconds:.1f} s",
        ]


def world_stats(scenes: list[Scene], seconds: float) -> WorldStats:
    """Counts, and the baselines over every phrase with boxes (scored as the probe scores them)."""
    arcs = Counter()
    phrases = boxes = 0
    skipped = Counter()
    for scene in scenes:
        boxes += sum(len(o.boxes) for o in scene.objects)
        for _, ph, heads, rels in scene.captions:
            phrases += len(ph)
            arcs.update(r for r, h in zip(rels, heads) if h > 0)
    totals = Counter()
    n = 0
    for scene in scenes:
        truth = {o.entity_id: np.stack(o.boxes) for o in scene.objects}
        valid = torch.ones(1, len(scene.regions), dtype=torch.bool)
        confidences = torch.from_numpy(scene.regions.confidences)[None]
        for _, ph, _, _ in scene.captions:
            for phrase in ph:
                if phrase.entity_id not in truth:
                    skipped["notvisual" if phrase.entity_id == 0 else
                            "scene" if phrase.entity_id == scene.setting_id else "nobox"] += 1
                    continue
                hits = torch.from_numpy(region_hits(scene.regions.boxes, truth[phrase.entity_id]))[None]
                n += 1  # the probe's own baselines, through the same code
                totals.update({k: float(v) for k, v in baseline_scores(hits, valid, confidences).items()})
    hc, oracle, rnd = (totals[k] for k in ("highest_confidence", "oracle", "random"))
    counts = [len(s.regions) for s in scenes]
    return WorldStats(len(scenes), phrases, boxes, (min(counts), max(counts), float(np.mean(counts))), dict(arcs),
                      hc / max(n, 1), oracle / max(n, 1), rnd / max(n, 1), dict(skipped), seconds)


