"""Fine-tuning and evaluation on the downstream tasks, and the ablation study (the paper's Table 5).

Batches are a pure function of (seed, step), as in pre-training. ``metrics.json`` holds the held-out
metrics of the task and ``chance``, the score of guessing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.loop import lr_at
from training.tasks import MAX_REGIONS, TASKS, Example, Task, TaskModel, load_task
from vb_probe.atomic import atomic_files
from vb_probe.data.features import open_features
from vb_probe.errors import DataError, VbProbeError
from vb_probe.families.visualbert.inputs import pad_inputs
from vb_probe.tables import csv_text
from vb_probe.tokenization import tokenize_words

FINETUNE_FILES = ("model.pt", "metrics.json")  # what `vb-train finetune --out` holds
ABLATION_FILES = ("ablation.csv", "ablation_runs.csv", "ablation.png")


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-4
    warmup_frac: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    max_text_len: int = 64
    device: str = "cpu"


class Encoder:
    """Examples → model inputs for a task (text segments, region blocks, alignments, targets)."""

    def __init__(self, task: Task, tokenizer, features, max_text_len: int, device):
        self.task, self.tokenizer, self.features = task, tokenizer, features
        self.max_text_len, self.device = max_text_len, device
        self._regions: dict[str, np.ndarray] = {}

    def regions(self, image_id: str) -> np.ndarray:
        if image_id not in self._regions:
            self._regions[image_id] = self.features[image_id].features[:MAX_REGIONS]
        return self._regions[image_id]

    def _sequence(self, segments: list[list[str]], alignment: dict[int, int]):
        """ids, token types, word → last sub-word position, and region → aligned sub-word positions."""
        ids, types, last, aligned = [self.tokenizer.cls_token_id], [0], {}, {}
        offset = 0
        budget = self.max_text_len - 1 - len(segments)
        for s, words in enumerate(segments):
            tokens = tokenize_words(self.tokenizer, words, max_length=budget // len(segments) + 2)
            body = tokens.input_ids[1:-1]
            start = len(ids)
            ids.extend(body + [self.tokenizer.sep_token_id])
            types.extend([s] * (len(body) + 1))
            for w, (first, end) in enumerate(zip(tokens.word_first_token, tokens.word_last_token)):
                if end is None:
                    continue
                last[offset + w] = start + end - 1
                if offset + w in alignment:
                    aligned.setdefault(alignment[offset + w], []).extend(range(start + first - 1, start + end))
            offset += len(words)
        return ids, types, last, aligned

    def batch(self, examples: list[Example]):
        """(inputs, extra forward arguments, targets) for a list of examples; the task says what its rows are."""
        rows = [row for example in examples for row in self.task.rows(example)]
        encoded = [self._sequence(segments, align) for segments, _, align in rows]
        blocks = [[self.regions(i) for i in images] for _, images, _ in rows]
        # each image its own visual segment: the first image type 1 (pre-training's), the second 0
        inputs = pad_inputs([e[0] for e in encoded], self.tokenizer.pad_token_id, token_types=[e[1] for e in encoded],
                            regions=[np.concatenate(block) for block in blocks],
                            region_types=[[1 - number for number, r in enumerate(block) for _ in r] for block in blocks])
        n, r_max = inputs["visual_embeds"].shape[:2]
        a_max = max([len(p) for e in encoded for p in e[3].values()] + [1])
        alignment = torch.full((n, r_max, a_max), -1, dtype=torch.long)
        for b, (_, _, _, aligned) in enumerate(encoded):
            for region, positions in aligned.items():
                if region < r_max:
                    alignment[b, region, :len(positions)] = torch.tensor(positions)
        if self.task.uses_alignment:
            inputs["image_text_alignment"] = alignment
        extra, targets = self.task.targets(examples, [e[2] for e in encoded], r_max, self.device)
        return {k: v.to(self.device) for k, v in inputs.items()}, extra, targets


@torch.no_grad()
def evaluate_task(model: TaskModel, task: Task, encoder: Encoder, examples: list[Example], batch_size: int = 64):
    model.eval()
    scores = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        inputs, extra, targets = encoder.batch(chunk)
        scores.extend(task.batch_scores(model(inputs, **extra), targets, len(chunk)))
    return task.metrics(scores, examples)


def build_encoder_model(init: str | Path, task: Task, tokenizer, visual_dim: int, shape: dict | None = None):
    """The encoder from a VisualBERT checkpoint folder, or random (``init='random'``, shape from ``shape``)."""
    from vb_probe.families.visualbert.checkpoints import load_model
    from vb_probe.families.visualbert.model import VisualBertConfig, VisualBertModel

    if str(init) == "random":
        if shape is None:  # the demo model's shape
            from training.config import ModelSection

            shape = _shape(type("C", (), {"model": ModelSection()})())
        encoder = VisualBertModel(VisualBertConfig(vocab_size=len(tokenizer), visual_embedding_dim=visual_dim,
                                                   pad_token_id=0, **shape))
    else:
        encoder = load_model(init)
        encoder.train()
        if encoder.config.visual_embedding_dim != visual_dim:
            raise DataError(f"{task.features_path()}: features are {visual_dim}-d but {init} expects "
                            f"{encoder.config.visual_embedding_dim}")
    return TaskModel(encoder, task)


def finetune(task_name: str, data_dir: Path, init: str | Path, out: Path, settings: FinetuneSettings,
             tokenizer_dir: Path | None = None, shape: dict | None = None, progress: bool = True) -> dict:
    """Fine-tune on the task's train split; write ``out/metrics.json`` (held-out metrics + chance)."""
    from tqdm.auto import tqdm

    from vb_probe.devices import resolve_device
    from vb_probe.tokenization import load_tokenizer

    started = time.time()
    device = resolve_device(settings.device)
    data_dir, out = Path(data_dir), Path(out)
    task = load_task(task_name, data_dir)
    tokenizer = load_tokenizer(tokenizer_dir or (data_dir / "tokenizer" if str(init) == "random" else init))
    features = open_features(task.features_path())
    train = task.examples(task.splits["train"])
    held_out = task.examples(task.splits["test"])
    if not train or not held_out:
        raise DataError(f"{data_dir}: task {task_name} has no training or held-out examples")
    torch.manual_seed(settings.seed)
    model = build_encoder_model(init, task, tokenizer, features.dim, shape).to(device)
    encoder = Encoder(task, tokenizer, features, settings.max_text_len, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    model.train()
    losses = []
    for step in tqdm(range(settings.steps), desc=f"fine-tuning {task_name}", disable=not progress, leave=False):
        rng = np.random.default_rng([settings.seed, 7, step])
        chunk = [train[int(i)] for i in rng.integers(0, len(train), settings.batch_size)]
        torch.manual_seed(settings.seed * 1_000_003 + step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings.steps, settings.lr, settings.warmup_frac)
        inputs, extra, targets = encoder.batch(chunk)
        loss = task.batch_loss(model(inputs, **extra), targets, len(chunk))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    metrics = evaluate_task(model, task, encoder, held_out)
    result = {"task": task_name, "split": task.splits["test"], "n_train": len(train), "n_held_out": len(held_out),
              "init": str(init), "steps": settings.steps, **metrics, "chance": task.chance(held_out),
              **_text_prior(task, held_out), "final_train_loss": float(np.mean(losses[-20:])),
              "wall_time_s": round(time.time() - started, 1)}
    with atomic_files(out) as staged:  # the model and its metrics land together or not at all
        torch.save({"model": model.state_dict(), "task": task_name, "config": model.visual_bert.config.to_dict(),
                    "tokenizer": str(Path(tokenizer.name_or_path).resolve()), "settings": dict(settings.__dict__)},
                   staged.path(FINETUNE_FILES[0]))
        staged.json(FINETUNE_FILES[1], result)
    return result


def evaluate_saved(run_dir: Path, data_dir: Path, device: str = "cpu") -> dict:
    """Evaluate a fine-tuned model (``model.pt`` of a finetune run) on the task's held-out split."""
    from vb_probe.families.visualbert.checkpoints import read_finetuned
    from vb_probe.families.visualbert.model import VisualBertConfig, VisualBertModel
    from vb_probe.tokenization import load_tokenizer

    saved = read_finetuned(Path(run_dir) / FINETUNE_FILES[0])
    task = load_task(saved["task"], data_dir)
    model = TaskModel(VisualBertModel(VisualBertConfig.from_dict(saved["config"])), task)
    model.load_state_dict(saved["model"])
    model.to(device)
    encoder = Encoder(task, load_tokenizer(saved["tokenizer"]), open_features(task.features_path()),
                      saved["settings"]["max_text_len"], device)
    held_out = task.examples(task.splits["test"])
    return {"task": task.name, "split": task.splits["test"], **evaluate_task(model, task, encoder, held_out),
            "chance": task.chance(held_out), **_text_prior(task, held_out)}


def _text_prior(task: Task, examples: list[Example]) -> dict:
    """``{"text_prior": {...}}`` where the task has a question-only baseline (VQA), else nothing."""
    prior = task.text_prior(examples)
    return {"text_prior": prior} if prior is not None else {}


# ------------------------------------------------------------------------------------------- ablation study

VARIANTS = {
    "full": {},
    "no-early-fusion": {"model.early_fusion": "false"},
    "no-coco-pretraining": "skip-pretraining",
    "no-bert-init": {"model.init": "random"},
    "no-grounded-pretraining": {"objective.grounded": "false"},
    "no-objective2": {"objective.sentence_image": "none"},
}


def ablate(task_name: str, data_dir: Path, out: Path, variants: list[str], seeds: int, pretrain_overrides: list[str],
           settings: FinetuneSettings, bert: Path | None = None, progress: bool = True, log=print) -> list[dict]:
    """For each variant and seed: pre-train (unless the variant skips it), fine-tune, score. Writes
    ``ablation.csv`` (one row per variant: mean ± std over seeds), ``ablation_runs.csv`` and ``ablation.png``."""
    from training.config import load_config
    from training.loop import pretrain

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise VbProbeError(f"--variants {','.join(unknown)}: unknown; choose from {','.join(VARIANTS)}")
    if task_name not in TASKS:
        raise VbProbeError(f"--task {task_name}: use one of {', '.join(TASKS)}")
    metric = TASKS[task_name].headline
    init_overrides = bert_overrides(Path(bert), pretrain_overrides) if bert else []
    runs = []
    if bert is None and "no-bert-init" in variants:
        log("  no-bert-init skipped: without --bert every variant already starts from random weights, so it "
            "would repeat 'full'; pass --bert DIR (any BertModel folder) to test BERT initialisation")
        variants = [v for v in variants if v != "no-bert-init"]
    for variant in variants:
        for seed in range(seeds):
            spec = VARIANTS[variant]
            overrides = pretrain_overrides + init_overrides + [f"train.seed={seed}"]
            if isinstance(spec, dict):
                overrides += [f"{k}={v}" for k, v in spec.items()]
            config = load_config(None, overrides)
            run_dir = out / variant / f"seed{seed}"
            if spec == "skip-pretraining":  # straight from the initialisation to the task
                init, shape = "random", _shape(config)
                if bert:
                    from training.loop import build_model
                    from vb_probe.families.visualbert.checkpoints import save_pretraining_model
                    from vb_probe.tokenization import load_tokenizer

                    tok = load_tokenizer(data_dir / config.data.tokenizer)
                    model = build_model(config, len(tok), open_features(data_dir / config.data.features).dim)
                    save_pretraining_model(model, run_dir / "init", tokenizer=tok)
                    init, shape = run_dir / "init", None
            else:
                final = run_dir / "pretrain" / "final"
                if not final.is_dir():
                    pretrain(config, data_dir, run_dir / "pretrain", resume=True, progress=progress)
                init, shape = final, None
            result = finetune(task_name, data_dir, init, run_dir / "finetune",
                              FinetuneSettings(**{**settings.__dict__, "seed": seed}),
                              tokenizer_dir=data_dir / config.data.tokenizer, shape=shape, progress=progress)
            runs.append({"variant": variant, "seed": seed, "score": result[metric], "chance": result["chance"][metric]})
            log(f"  {variant} seed {seed}: {metric} {result[metric]:.3f}")
    rows = []
    for variant in variants:
        scores = [r["score"] for r in runs if r["variant"] == variant]
        rows.append({"variant": variant, "metric": metric, "mean": f"{np.mean(scores):.4f}",
                     "std": f"{np.std(scores):.4f}", "seeds": len(scores), "chance": f"{runs[0]['chance']:.4f}"})
    with atomic_files(out) as staged:  # the table, the runs and the figure land together
        staged.text(ABLATION_FILES[0], csv_text(["variant", "metric", "mean", "std", "seeds", "chance"], rows))
        staged.text(ABLATION_FILES[1], csv_text(["variant", "seed", "score", "chance"], runs))
        _figure(rows, metric).savefig(staged.path(ABLATION_FILES[2]), format="png")
    return rows


# the model-section fields that fix a model's shape (a BERT folder's config.json has the same names)
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings")


def bert_overrides(bert: Path, user_overrides: list[str]) -> list[str]:
    """With ``--bert``: every variant takes BERT's shape (so the random-init ones differ in initialisation
    only) and, unless ``data.tokenizer`` is set, the BERT folder's tokenizer (its vocabulary is the model's)."""
    from vb_probe.families.visualbert.checkpoints import read_config_json

    raw = read_config_json(bert)
    overrides = [f"model.{k}={raw[k]}" for k in SHAPE_KEYS if k in raw]
    if not any(o.startswith("data.tokenizer=") for o in user_overrides):
        overrides.append(f"data.tokenizer={bert.resolve()}")
    return overrides + [f"model.init=bert:{bert.resolve()}"]


def _shape(config) -> dict:
    return {k: getattr(config.model, k) for k in SHAPE_KEYS}


def _figure(rows: list[dict], metric: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=120)
    ax = fig.add_subplot()
    means = [float(r["mean"]) for r in rows]
    stds = [float(r["std"]) for r in rows]
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="tab:blue")
    ax.axhline(float(rows[0]["chance"]), color="grey", linestyle="--", label="chance")
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title("Ablation (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
