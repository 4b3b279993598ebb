"""The paper's four downstream tasks: readers of their real file formats, heads, losses and metrics.

* VQA 2.0 — questions/annotations JSON; answer vocabulary of the most frequent answers; soft scores
  min(#humans / 3, 1); binary cross-entropy; VQA accuracy.
* NLVR2 — jsonl, images ``<identifier-stem>-img0/-img1``; both images' regions in one sequence, each
  image with its own visual segment embedding; a pair classifier; accuracy (+ consistency over
  statements sharing a pair of images).
* VCR — jsonl; 4 answers (Q→A), 4 rationales (QA→R), Q→AR; object tags become the object's name and are
  aligned to their box through the visual position embedding (the paper's f_p, ``image_text_alignment``).
* Flickr30K Entities region-to-phrase — an extra attention block on top; the mean over its heads of the
  attention from a phrase's last sub-word to the regions scores each box; trained towards boxes with
  IoU ≥ 0.5; R@1/5/10 and the upper bound.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vb_probe.data.features import open_features
from vb_probe.data.flickr30k import Flickr30kEntities
from vb_probe.data.text import read_json_file
from vb_probe.errors import DataError, VbProbeError
from vb_probe.metrics.boxes import region_hits

MAX_REGIONS = 100


@dataclass
class Example:
    """Text segments (lists of words), region blocks (one per image), and the target."""

    segments: list[list[str]]
    images: list[str]
    target: object
    alignment: dict[int, int] = field(default_factory=dict)  # word index in segment 0+1 → region index
    group: str = ""


def _read_json(path: Path):
    return read_json_file(path, "re-create the task's files", "task file not found; pass --data with the task's "
                          "files (e.g. a built-in world)")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: task file not found; pass --data with the task's files")
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                raise DataError(f"{path}:{number}: not a JSON object; each line of a jsonl file is one example") from None
    return out


Row = tuple[list[list[str]], list[str], dict[int, int]]  # one model input: text segments, images, word → region


class Task:
    """One downstream task: its files, examples per split, head, inputs, loss, score, metrics and defaults.

    Everything task-specific lives on the subclass, found through one registry (:func:`register_task`); the
    trainer (:mod:`training.finetune`) and the CLI only ask the task. A new task is one class in one module.
    """

    name = ""
    splits = {"train": "train", "eval": "val", "test": "test"}
    own_features = False  # a features.tsv of its own beside the task's files (NLVR2's pair images, VCR's objects)
    default_steps = 300  # `vb-train finetune` steps on the built-in world at the demo size
    headline = ""  # the metric the ablation study compares
    text_pretraining = True  # its text can be masked-LM pre-training captions (`vb-train pretrain --task`);
    # a task whose text cannot says why in caption_words
    uses_alignment = False  # words aligned to regions through the visual position embedding (``image_text_alignment``)
    head_name = "cls"  # the head's attribute on TaskModel (transformers' name, so state dicts keep their keys)
    n_outputs = 0

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)

    @property
    def folder(self) -> Path:
        """The task's files: ``<data>/tasks/<name>`` (the built-in world's layout), else ``<data>`` itself."""
        inner = self.data_dir / "tasks" / self.name
        return inner if inner.is_dir() else self.data_dir

    def features_path(self) -> Path:
        inner = self.data_dir / "tasks" / self.name / "features.tsv"
        return inner if self.own_features and inner.is_file() else self.data_dir / "features.tsv"

    def examples(self, split: str) -> list[Example]:
        raise NotImplementedError

    # ------------------------------------------------------------------ model side (defaults: [CLS] classifier)

    def rows(self, example: Example) -> list[Row]:
        """The model inputs of one example (several for multiple choice)."""
        return [(example.segments, example.images, example.alignment)]

    def make_head(self, config) -> nn.Module:
        return nn.Linear(config.hidden_size, self.n_outputs)

    def logits(self, head: nn.Module, output, inputs: dict, extra: dict, dropout: nn.Module) -> torch.Tensor:
        """[rows, n_outputs] from the pooled [CLS] state."""
        return head(dropout(output.pooler_output))

    def targets(self, examples: list[Example], last_tokens: list[dict[int, int]], r_max: int, device) -> tuple[dict, object]:
        """(extra forward arguments, targets) of a batch; ``last_tokens[b]`` maps row b's words to positions."""
        return {}, [e.target for e in examples]

    def loss(self, logits: torch.Tensor, targets) -> torch.Tensor:
        raise NotImplementedError

    def score(self, logits: torch.Tensor, targets) -> list[float]:
        raise NotImplementedError

    def batch_loss(self, logits: torch.Tensor, targets, n_examples: int) -> torch.Tensor:
        return self.loss(logits, targets)

    def batch_scores(self, logits: torch.Tensor, targets, n_examples: int) -> list[float]:
        return self.score(logits, targets)

    # ------------------------------------------------------------------ evaluation

    def metrics(self, scores: list[float], examples: list[Example]) -> dict:
        raise NotImplementedError

    def chance(self, examples: list[Example]) -> dict[str, float]:
        raise NotImplementedError

    def text_prior(self, examples: list[Example]) -> dict[str, float] | None:
        """The score of a guesser that reads the question but not the image, where the task has one."""
        return None

    def caption_words(self, example: Example) -> list[str] | None:
        """The example's text as a pre-training caption (None: leave the example out)."""
        return example.segments[0]


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` a task of `vb-train finetune --task <cls.name>` and the Python API."""
    if not cls.name or cls.name == "all" or cls.name in TASKS:
        raise ValueError(f"task name {cls.name!r}: give each task a new, non-empty name other than 'all'")
    TASKS[cls.name] = cls
    return cls


def load_task(name: str, data_dir: Path) -> Task:
    if name not in TASKS:
        raise VbProbeError(f"--task {name}: use one of {', '.join(TASKS)}")
    return TASKS[name](data_dir)


def _vqa_score(answer: str, human: dict[str, int]) -> float:
    """VQA accuracy of one answer: min(#humans that gave it / 3, 1)."""
    return min(human.get(answer, 0) / 3.0, 1.0)


def _ranked(counts: Counter) -> list[str]:
    """Most frequent first; ties in alphabetical order (so every run picks the same answer)."""
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _question_type(question: dict, annotation: dict) -> str:
    """VQA's ``question_type`` (its annotations have one), else the question's first three words."""
    return annotation.get("question_type") or " ".join(question["question"].split()[:3])


@register_task
class VQATask(Task):
    name = "vqa"
    default_steps = 800  # its [CLS] has to learn to read the image: at 300 steps it equals the question-only prior
    headline = "vqa_accuracy"

    def __init__(self, data_dir: Path, max_answers: int = 3129):
        super().__init__(data_dir)
        train = self._load(self.splits["train"])
        self.answers = _ranked(Counter(a["multiple_choice_answer"] for _, a in train))[:max_answers]
        self.index = {a: i for i, a in enumerate(self.answers)}
        by_type: dict[str, Counter] = {}
        for q, a in train:
            by_type.setdefault(_question_type(q, a), Counter())[a["multiple_choice_answer"]] += 1
        self.top_by_question_type = {kind: _ranked(counts)[0] for kind, counts in by_type.items()}

    def _load(self, split: str):
        questions = _read_json(self.folder / f"v2_OpenEnded_mscoco_{split}_questions.json")["questions"]
        annotations = {a["question_id"]: a for a in
                       _read_json(self.folder / f"v2_mscoco_{split}_annotations.json")["annotations"]}
        missing = [q["question_id"] for q in questions if q["question_id"] not in annotations]
        if missing:
            raise DataError(f"{self.folder}: question {missing[0]} of split {split} has no annotation")
        return [(q, annotations[q["question_id"]]) for q in questions]

    @property
    def n_outputs(self) -> int:
        return len(self.answers)

    def examples(self, split: str) -> list[Example]:
        out = []
        for q, a in self._load(split):
            human = Counter(ans["answer"] for ans in a["answers"])
            soft = {self.index[ans]: _vqa_score(ans, human) for ans in human if ans in self.index}
            target = {"soft": soft, "human": dict(human), "answer_type": a.get("answer_type", "other")}
            out.append(Example([q["question"].split()], [str(q["image_id"])], target, group=_question_type(q, a)))
        return out

    def loss(self, logits: torch.Tensor, targets: list) -> torch.Tensor:
        soft = torch.zeros_like(logits)
        for row, target in enumerate(targets):
            for index, score in target["soft"].items():
                soft[row, index] = score
        return F.binary_cross_entropy_with_logits(logits, soft, reduction="mean") * logits.shape[1]

    def score(self, logits: torch.Tensor, targets: list) -> list[float]:
        predictions = logits.argmax(-1).tolist()
        return [_vqa_score(self.answers[p], t["human"]) for p, t in zip(predictions, targets)]

    def metrics(self, scores: list[float], examples: list[Example]) -> dict:
        """VQA accuracy, overall and by answer type (yes/no, number, other), as VQA's evaluation reports it."""
        by_type: dict[str, list[float]] = {}
        for score, example in zip(scores, examples):
            by_type.setdefault(example.target["answer_type"], []).append(score)
        return {"vqa_accuracy": float(np.mean(scores)),
                "by_answer_type": {kind: float(np.mean(v)) for kind, v in sorted(by_type.items())}}

    def chance(self, examples: list[Example]) -> dict[str, float]:
        """Always answering the most frequent training answer."""
        return {"vqa_accuracy": float(np.mean([_vqa_score(self.answers[0], e.target["human"]) for e in examples]))}

    def text_prior(self, examples: list[Example]) -> dict[str, float]:
        """VQA's "per Q-type prior" (Antol et al. 2015): the most frequent training answer of the question's type
        (the annotation's ``question_type``, else its first three words); types unseen in training get the
        overall most frequent answer."""
        return {"vqa_accuracy": float(np.mean([
            _vqa_score(self.top_by_question_type.get(e.group, self.answers[0]), e.target["human"]) for e in examples]))}

    def caption_words(self, example: Example) -> list[str]:
        """The question and its most frequent human answer."""
        answer = max(example.target["human"], key=lambda a: (example.target["human"][a], a))
        return example.segments[0] + [answer]


@register_task
class NLVR2Task(Task):
    name = "nlvr2"
    splits = {"train": "train", "eval": "dev", "test": "test1"}
    n_outputs = 2
    default_steps = 800  # as VQA: at 300 steps it is still at chance
    headline = "accuracy"
    text_pretraining = False  # each statement describes two images at once

    own_features = True

    def examples(self, split: str) -> list[Example]:
        folder = self.folder
        out = []
        for entry in _read_jsonl(folder / f"{split}.json"):
            stem = entry["identifier"].rsplit("-", 1)[0]
            if entry.get("label") not in ("True", "False"):
                raise DataError(f"{folder / (split + '.json')}: {entry['identifier']} label {entry.get('label')!r}, "
                                "expected 'True' or 'False'")
            # consistency is over a statement's pairs: same set (identifier minus pair and statement), same text
            group = f"{stem.rsplit('-', 1)[0]}|{entry['sentence']}"
            out.append(Example([entry["sentence"].split()], [f"{stem}-img0", f"{stem}-img1"],
                               int(entry["label"] == "True"), group=group))
        return out

    def loss(self, logits, targets):
        return F.cross_entropy(logits, torch.tensor(targets, device=logits.device))

    def score(self, logits, targets):
        return (logits.argmax(-1).cpu() == torch.tensor(targets)).float().tolist()

    def metrics(self, scores, examples):
        groups: dict[str, list[float]] = {}
        for s, e in zip(scores, examples):
            groups.setdefault(e.group, []).append(s)
        return {"accuracy": float(np.mean(scores)),
                "consistency": float(np.mean([all(v) for v in groups.values() if len(v) > 1]))
                if any(len(v) > 1 for v in groups.values()) else None}

    def chance(self, examples):
        share = float(np.mean([e.target for e in examples]))
        return {"accuracy": max(share, 1 - share)}

    def caption_words(self, example: Example) -> list[str]:
        raise DataError("task-specific pre-training on NLVR2 is not supported: each statement describes two "
                        "images; pre-train on another task's text or on captions")


@register_task
class VCRTask(Task):
    """Each example is one (question, 4 candidates) choice; Q→A and QA→R examples are paired by annot_id."""

    name = "vcr"
    n_outputs = 1
    headline = "q2ar"
    uses_alignment = True

    own_features = True

    def examples(self, split: str) -> list[Example]:
        folder = self.folder
        out = []
        for entry in _read_jsonl(folder / f"{split}.jsonl"):
            image = Path(entry["img_fn"]).stem
            names = entry["objects"]
            question, q_align = self._words(entry["question"], names, 0)
            for mode in ("q2a", "qa2r"):
                if mode == "q2a":
                    choices, label, prefix, prefix_align = entry["answer_choices"], entry["answer_label"], question, q_align
                else:
                    answer, a_align = self._words(entry["answer_choices"][entry["answer_label"]], names, len(question))
                    choices, label = entry["rationale_choices"], entry["rationale_label"]
                    prefix, prefix_align = question + answer, {**q_align, **a_align}
                candidates = []
                for choice in choices:
                    words, align = self._words(choice, names, len(prefix))
                    candidates.append((words, {**prefix_align, **align}))
                out.append(Example([prefix], [image], {"label": int(label), "candidates": candidates, "mode": mode},
                                   group=entry["annot_id"]))
        return out

    @staticmethod
    def _words(tokens: list, names: list[str], offset: int) -> tuple[list[str], dict[int, int]]:
        """Object tags ([i] lists) become the objects' names, each aligned to its region."""
        words, align = [], {}
        for token in tokens:
            if isinstance(token, list):
                for i, obj in enumerate(token):
                    if i:
                        words.append("and")
                    align[offset + len(words)] = int(obj)
                    words.append(names[int(obj)])
            else:
                words.append(str(token))
        return words, align

    def rows(self, example: Example) -> list[Row]:
        """One row per candidate: the question (and answer) followed by the candidate."""
        return [(example.segments + [words], example.images, align) for words, align in example.target["candidates"]]

    def score(self, logits, targets):
        return (logits.argmax(-1).cpu() == torch.tensor([t["label"] for t in targets])).float().tolist()

    def loss(self, logits, targets):
        return F.cross_entropy(logits, torch.tensor([t["label"] for t in targets], device=logits.device))

    def batch_loss(self, logits, targets, n_examples):
        return self.loss(logits.view(n_examples, -1), targets)  # a row per candidate → a choice per example

    def batch_scores(self, logits, targets, n_examples):
        return self.score(logits.view(n_examples, -1), targets)

    def caption_words(self, example: Example) -> list[str] | None:
        """Question, answer and rationale, once (the Q→A example's text is part of the QA→R one)."""
        if example.target["mode"] == "q2a":
            return None
        return example.segments[0] + example.target["candidates"][example.target["label"]][0]

    def metrics(self, scores, examples):
        by_id: dict[str, dict[str, float]] = {}
        for s, e in zip(scores, examples):
            by_id.setdefault(e.group, {})[e.target["mode"]] = s
        q2a = [v["q2a"] for v in by_id.values() if "q2a" in v]
        qa2r = [v["qa2r"] for v in by_id.values() if "qa2r" in v]
        both = [v["q2a"] * v["qa2r"] for v in by_id.values() if len(v) == 2]
        return {"q2a": float(np.mean(q2a)), "qa2r": float(np.mean(qa2r)), "q2ar": float(np.mean(both))}

    def chance(self, examples):
        return {"q2a": 0.25, "qa2r": 0.25, "q2ar": 0.0625}


@register_task
class Flickr30kTask(Task):
    """Region-to-phrase: every phrase with gold boxes is one example; the target is the regions with IoU ≥ 0.5."""

    name = "flickr30k"
    headline = "r@1"
    head_name = "attention"

    def examples(self, split: str) -> list[Example]:
        root = self.data_dir / "flickr30k" if (self.data_dir / "flickr30k").is_dir() else self.data_dir
        flickr = Flickr30kEntities(root)
        features = open_features(self.features_path())
        out = []
        for image_id in flickr.split(split):
            annotation = flickr.annotation(image_id)
            boxes = features[image_id].boxes[:MAX_REGIONS]
            for caption in flickr.captions(image_id):
                phrases = [p for p in caption.phrases if p.entity_id in annotation.boxes]
                if phrases:
                    targets = [(p.last_word_index, region_hits(boxes, annotation.boxes[p.entity_id])) for p in phrases]
                    out.append(Example([list(caption.words)], [image_id], targets))
        return out

    def make_head(self, config) -> nn.Module:
        return RegionToPhraseAttention(config.hidden_size, config.num_attention_heads)

    def logits(self, head, output, inputs, extra, dropout):
        """[phrases, R] log-scores of each phrase's regions."""
        hidden = output.last_hidden_state
        text_len = inputs["input_ids"].shape[1]
        b, t = extra["phrase_batch"], extra["phrase_token"]
        return head(hidden[b, t], hidden[b, text_len:], inputs["visual_attention_mask"][b].bool())

    def targets(self, examples, last_tokens, r_max, device):
        """Each phrase's last sub-word position, and [phrases, r_max] bool: the regions that hit its boxes."""
        b_idx, t_idx, hits = [], [], []
        for b, (example, last) in enumerate(zip(examples, last_tokens)):
            for word, hit in example.target:
                if word in last:
                    b_idx.append(b)
                    t_idx.append(last[word])
                    padded = np.zeros(r_max, dtype=bool)
                    padded[:len(hit)] = hit
                    hits.append(padded)
        extra = {"phrase_batch": torch.tensor(b_idx, dtype=torch.long, device=device),
                 "phrase_token": torch.tensor(t_idx, dtype=torch.long, device=device)}
        return extra, torch.from_numpy(np.stack(hits))

    def batch_loss(self, logits, targets, n_examples):
        """Cross-entropy towards the boxes with IoU ≥ 0.5 (uniform over them)."""
        hits = targets.to(logits.device).float()
        keep = hits.sum(-1) > 0
        dist = hits[keep] / hits[keep].sum(-1, keepdim=True)
        return -(dist * logits[keep].clamp_min(-1e4)).sum(-1).mean()

    def batch_scores(self, logits, targets, n_examples):
        """The rank of the best-ranked correct region of each phrase (inf when none is correct)."""
        order = logits.argsort(-1, descending=True).cpu()
        out = []
        for row, hit in zip(order, targets):
            ranks = [i for i, region in enumerate(row.tolist()) if hit[region]]
            out.append(ranks[0] if ranks else float("inf"))
        return out

    def metrics(self, scores, examples):
        ranks = np.array(scores, dtype=float)  # rank of the best-ranked correct region, inf when none
        return {"r@1": float(np.mean(ranks < 1)), "r@5": float(np.mean(ranks < 5)), "r@10": float(np.mean(ranks < 10)),
                "upper_bound": float(np.mean(np.isfinite(ranks)))}

    def chance(self, examples):
        """Expected recall@k of k regions drawn at random (without replacement) from each phrase's image."""
        totals = {1: 0.0, 5: 0.0, 10: 0.0}
        n = 0
        for e in examples:
            for _, hits in e.target:
                regions, good = len(hits), int(hits.sum())
                n += 1
                for k in totals:
                    drawn = min(k, regions)
                    all_miss = math.comb(regions - good, drawn) / math.comb(regions, drawn)
                    totals[k] += 1 - all_miss
        return {f"r@{k}": v / n for k, v in totals.items()}


class RegionToPhraseAttention(nn.Module):
    """An extra attention block: per head, query from the phrase token, keys from the regions; the mean over
    heads of the attention scores each region."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)

    def forward(self, phrase: torch.Tensor, regions: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
        """``phrase`` [n, hidden], ``regions`` [n, R, hidden], ``region_mask`` [n, R] → log-scores [n, R]."""
        n, r, _ = regions.shape
        q = self.query(phrase).view(n, self.heads, 1, self.head_dim)
        k = self.key(regions).view(n, r, self.heads, self.head_dim).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(self.head_dim)  # [n, heads, R]
        logits = logits.masked_fill(~region_mask[:, None, :], float("-inf"))
        return torch.log(logits.softmax(-1).mean(1).clamp_min(1e-12))


class TaskModel(nn.Module):
    """Encoder + the task's head (``cls``; region-to-phrase ``attention``), with transformers' names."""

    def __init__(self, encoder, task: Task, dropout: float = 0.1):
        super().__init__()
        self.visual_bert = encoder
        self.task = task
        self.dropout = nn.Dropout(dropout)
        self.add_module(task.head_name, task.make_head(encoder.config))

    def forward(self, inputs: dict[str, torch.Tensor], **extra) -> torch.Tensor:
        return self.task.logits(getattr(self, self.task.head_name), self.visual_bert(**inputs), inputs, extra,
                                self.dropout)


def task_captions(task: Task) -> dict:
    """The task's own text as a Karpathy-split captions file, for task-specific pre-training (masked LM on the
    task's text with its images); what counts as an example's text is the task's :meth:`Task.caption_words`."""
    images: dict[tuple[str, str], list[list[str]]] = {}
    for split_key, split in (("train", task.splits["train"]), ("val", task.splits["eval"])):
        for example in task.examples(split):
            words = task.caption_words(example)
            if words is not None:
                images.setdefault((split_key, example.images[0]), []).append([w.lower() for w in words])
    entries = [{"filename": f"{image}.png", "imgid": image, "split": split,
                "sentences": [{"tokens": words, "raw": " ".join(words)} for words in sentences]}
               for (split, image), sentences in images.items()]
    return {"dataset": f"{task.name}-text", "images": entries}
