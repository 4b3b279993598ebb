"""The pre-training loop: reads top to bottom. AdamW, linear warm-up then linear decay, autocast where
the device has it, gradient accumulation, clipping, periodic evaluation, atomic resumable checkpoints,
and DDP when started by ``torchrun``.

Losses are normalised by the *global* number of masked tokens (and samples) of the step, so one process
and several processes with the same global batch compute the same gradient.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.config import NOT_WEIGHTS, TrainConfig, TrainSection, config_from_dict
from training.data import PretrainBatch, PretrainData
from training.vilt import build_vilt, image_processor_for, save_vilt
from vb_probe.atomic import KIND_NAMES, MANIFEST, Manifest, atomic_open, read_manifest, remove_stale_temporaries
from vb_probe.devices import resolve_device, torch_threads
from vb_probe.errors import CheckpointError, Terminated, VbProbeError
from vb_probe.families.visualbert.checkpoints import init_from_bert, load_model, load_pretraining_model, save_pretraining_model
from vb_probe.families.visualbert.model import VisualBertConfig, VisualBertModel
from vb_probe.families.visualbert.pretraining import VisualBertForPreTraining
from vb_probe.tables import write_csv
from vb_probe.tokenization import load_tokenizer


def lr_at(step: int, total: int, base_lr: float, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then linear decay to 0 (pure function)."""
    warmup = max(1, int(round(total * warmup_frac)))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * max(0.0, (total - step) / max(1, total - warmup))


def build_model(config: TrainConfig, vocab_size: int, visual_dim: int) -> VisualBertForPreTraining:
    """From random weights, or the text side from a local BERT folder (``model.init = bert:<folder>``)."""

    m = config.model
    shape = dict(hidden_dropout_prob=m.hidden_dropout_prob, attention_probs_dropout_prob=m.attention_probs_dropout_prob,
                 bypass_transformer=not m.early_fusion)
    if m.init.startswith("bert:"):
        encoder = init_from_bert(m.init[len("bert:"):], visual_dim, **shape)
        if encoder.config.vocab_size < vocab_size:
            raise VbProbeError(f"{m.init}: BERT vocabulary ({encoder.config.vocab_size}) is smaller than the "
                               f"tokenizer's ({vocab_size}); use the tokenizer that came with the BERT folder")
    elif m.init == "random":
        torch.manual_seed(config.train.seed)
        encoder = VisualBertModel(VisualBertConfig(
            vocab_size=vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
            max_position_embeddings=m.max_position_embeddings, visual_embedding_dim=visual_dim, pad_token_id=0,
            **shape))
    else:
        raise VbProbeError(f"model.init={m.init!r}: use 'random' or 'bert:<folder>'")
    torch.manual_seed(config.train.seed + 1)
    return VisualBertForPreTraining(encoder)


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Distributed:
    """Initialise the process group when launched by torchrun (gloo on CPU, nccl on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def _all_sum(value: float, dd: Distributed) -> float:
    if dd.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item())


def _autocast(device: torch.device, amp: str):
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def losses(model, batch: PretrainBatch, n_masked_global: float, n_sip_global: float, world: int):
    """(total, mlm, sip) losses of a (micro-)batch, normalised by the step's global counts."""
    mlm_logits, sip_logits = model(batch.inputs, batch.mlm_batch_index, batch.mlm_positions)
    mlm = F.cross_entropy(mlm_logits.float(), batch.mlm_labels, reduction="sum") * world / max(n_masked_global, 1)
    sip = torch.zeros((), device=mlm.device)
    if batch.sip_labels is not None:
        sip = F.cross_entropy(sip_logits.float(), batch.sip_labels, reduction="sum") * world / max(n_sip_global, 1)
    return mlm + sip, mlm, sip


def _tally(total: list[int], right: torch.Tensor) -> None:
    """Add a bool tensor's hits and size to ``total`` = [correct, seen]."""
    total[0] += int(right.sum())
    total[1] += len(right)


@torch.no_grad()
def evaluate(model: VisualBertForPreTraining, data: PretrainData, config: TrainConfig, device) -> dict[str, float]:
    """Masked-LM accuracy (all, entity words), sentence-image accuracy, and masked-entity accuracy with the
    regions removed: the gap between the two entity accuracies says how much the image is used."""
    model.eval()
    totals = {"mlm": [0, 0], "entity": [0, 0], "entity_no_image": [0, 0], "sip": [0, 0]}
    for step in range(config.train.eval_batches):
        batch = data.batch(step, config.objective, config.train, split="eval", device=device)
        mlm_logits, sip_logits = model(batch.inputs, batch.mlm_batch_index, batch.mlm_positions)
        right = mlm_logits.argmax(-1) == batch.mlm_labels
        _tally(totals["mlm"], right)
        _tally(totals["entity"], right[batch.mlm_is_entity])
        if batch.sip_labels is not None:
            _tally(totals["sip"], sip_logits.argmax(-1) == batch.sip_labels)
        text_only = {k: v for k, v in batch.inputs.items() if not k.startswith("visual")}
        if "pixel_values" in text_only:  # ViLT cannot go without pixels: a blank (mid-grey) image instead
            text_only["pixel_values"] = torch.zeros_like(text_only["pixel_values"])
        if len(text_only) != len(batch.inputs) or "pixel_values" in text_only:
            logits, _ = model(text_only, batch.mlm_batch_index, batch.mlm_positions)
            _tally(totals["entity_no_image"], (logits.argmax(-1) == batch.mlm_labels)[batch.mlm_is_entity])
    model.train()
    return {f"eval_{k}_acc": (c / n if n else float("nan")) for k, (c, n) in totals.items()}


# ------------------------------------------------------------------------------------------- checkpoints

def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def save_checkpoint(out: Path, step: int, model, optimizer, config: TrainConfig, keep: int = 2) -> Path:
    """Atomically write ``checkpoints/step-<N>.pt``: model, optimizer, schedule position, RNG states, config.

    Only tensors and plain values (numbers, strings, lists, dicts), so it loads with ``weights_only=True``.
    """
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "step": step, "config": config.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "schedule": {"step": step, "total": config.train.steps},
        "rng": {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(gauss)],
                "python": random.getstate()},
        "data_position": {"next_step": step},
    }
    path = checkpoint_dir(out) / f"step-{step:07d}.pt"
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)
    for old in sorted(checkpoint_dir(out).glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def restore_rng(rng: dict) -> None:
    """Inverse of what :func:`save_checkpoint` stores under ``rng``."""
    torch.set_rng_state(rng["torch"])
    name, keys, position, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))


def latest_checkpoint(out: Path) -> dict | None:
    """The newest checkpoint that loads (a damaged newest one falls back to the one before).

    Read with ``weights_only=True``: a file holding anything but tensors and plain values is refused, never run.
    Temporary files of a save that was killed are removed first.
    """
    remove_stale_temporaries(checkpoint_dir(out), ".step-*.pt.*.tmp")
    for path in sorted(checkpoint_dir(out).glob("step-*.pt"), reverse=True):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects, not only tensors and plain values "
                f"({str(exc).splitlines()[-1][:100]}); it was not written by this version of vb-train — "
                "delete it or run again without --resume") from None
        except Exception:  # truncated by a crash: the one before it is complete
            continue
    return None


RUN_ENTRIES = {"checkpoints", "final", "log.csv", "tensorboard", "cache", "stages", MANIFEST}  # what a run folder holds


_CLAIMED: set[Path] = set()  # run folders this process claimed (the CLI claims before writing a task's text)


def claim_run_folder(out: Path, resume: bool) -> None:
    """Before any work: ``out`` must be new or empty, or (with ``--resume``) a pre-training run. A run folder
    without ``--resume`` is refused (continuing it would mix two runs' checkpoints and logs), and so is any other
    folder: a world, a checkpoint, an output folder, or a user's files. Marks the folder as a run."""
    if int(os.environ.get("RANK", "0")) != 0 or out.resolve() in _CLAIMED:  # under torchrun, rank 0 claims it
        return
    if out.is_dir() and any(out.iterdir()):
        manifest = read_manifest(out)
        entries = sorted(p.name for p in out.iterdir())
        is_run = (manifest is not None and manifest.kind == "run") or (manifest is None and "checkpoints" in entries
                                                                          and set(entries) <= RUN_ENTRIES)
        if manifest is not None and manifest.kind not in (None, "run"):
            raise VbProbeError(f"--out {out}: is {KIND_NAMES.get(manifest.kind, manifest.kind)} that vb-probe wrote, "
                               "not a pre-training run; choose a new --out (nothing was changed)")
        if not is_run:
            raise VbProbeError(f"--out {out}: the folder holds files that are not a pre-training run "
                               f"({', '.join(entries[:3])}); choose a new or empty --out (nothing was changed)")
        if not resume:
            raise VbProbeError(f"--out {out}: holds a pre-training run already; pass --resume to continue it, or "
                               "choose a new --out (nothing was changed)")
    out.mkdir(parents=True, exist_ok=True)
    if read_manifest(out) is None:
        from vb_probe.atomic import write_json

        write_json(out / MANIFEST, Manifest("run").to_json())
    _CLAIMED.add(out.resolve())


def check_resumed_config(saved: TrainConfig, asked: TrainConfig, out: Path) -> TrainConfig:
    """A resumed run keeps its own config; only ``train.steps`` and when checkpoints are written may change. Any
    other difference is refused (silently training on with the old values would make the numbers mean something
    else)."""
    old, new = saved.to_dict(), asked.to_dict()
    free = {("train", "steps"), *NOT_WEIGHTS}
    differs = [f"{section}.{key}: {old[section].get(key)!r} → {value!r}"
               for section, values in new.items() for key, value in values.items()
               if (section, key) not in free and old.get(section, {}).get(key) != value]
    if differs:
        shown = "; ".join(differs[:3]) + (f"; and {len(differs) - 3} more" if len(differs) > 3 else "")
        raise VbProbeError(f"--resume {out}: the run was started with another config ({shown}); resume with the "
                           "same --config and --set values (only --steps may change), or start a new --out")
    return replace(saved, train=replace(saved.train, steps=asked.train.steps, save_every=asked.train.save_every,
                                        save_every_s=asked.train.save_every_s))


# ------------------------------------------------------------------------------------------- the loop

def starting_model(config: TrainConfig, init_checkpoint: Path | None, tokenizer, visual_dim: int
                   ) -> VisualBertForPreTraining:
    """A VisualBERT checkpoint to continue from (its own shape; its heads when it has them), else :func:`build_model`."""
    if init_checkpoint is None:
        return build_model(config, len(tokenizer), visual_dim)
    try:
        model = load_pretraining_model(init_checkpoint).train()
    except CheckpointError:
        model = VisualBertForPreTraining(load_model(init_checkpoint).train())
    if model.config.vocab_size < len(tokenizer) or model.config.visual_embedding_dim != visual_dim:
        raise VbProbeError(f"{init_checkpoint}: vocab {model.config.vocab_size} / visual width "
                           f"{model.config.visual_embedding_dim} do not fit the data's tokenizer ({len(tokenizer)}) "
                           f"/ features ({visual_dim}); use the checkpoint's tokenizer and matching features")
    return model


def make_optimizer(model: torch.nn.Module, t: TrainSection) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases and LayerNorm), fused: one kernel per group step."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "LayerNorm" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=t.lr, fused=True)


def train_step(trained, model, optimizer, micro_batches: list[PretrainBatch], t: TrainSection, dd: Distributed,
               device: torch.device, cuda_graphs: bool) -> tuple[list[float], float]:
    """Forward and backward over the step's micro-batches, clip, update. Returns the step's (total, masked-LM,
    sentence-image) losses summed over processes, and the gradient norm before clipping."""
    n_masked = _all_sum(sum(len(b.mlm_labels) for b in micro_batches), dd)
    n_sip = _all_sum(sum(len(b.sip_labels) if b.sip_labels is not None else 0 for b in micro_batches), dd)
    totals = np.zeros(3)
    for m, batch in enumerate(micro_batches):
        sync = nullcontext() if (dd.world == 1 or m == t.grad_accum - 1) else trained.no_sync()
        if cuda_graphs:  # the previous step's graph outputs are no longer read
            torch.compiler.cudagraph_mark_step_begin()
        with sync, _autocast(device, t.amp):
            loss, mlm, sip = losses(trained, batch, n_masked, n_sip, dd.world)
        loss.backward()
        totals += [loss.item() / dd.world, mlm.item() / dd.world, sip.item() / dd.world]
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm) if t.clip_norm else torch.tensor(0.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return [_all_sum(v, dd) for v in totals], float(grad_norm)


class RunLog:
    """``log.csv`` (rewritten at each save, so it never runs ahead of the checkpoint) and TensorBoard scalars."""

    def __init__(self, out: Path, start_step: int, main: bool):
        self.path, self.main = out / "log.csv", main
        self.history: list[dict] = _read_log(self.path, start_step) if main else []
        self.writer = _tensorboard(out) if main else None

    def record(self, row: dict) -> None:
        if not self.main:
            return
        self.history.append(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, row["step"])

    def save(self) -> None:
        if self.main:
            _write_log(self.path, self.history)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def pretrain(config: TrainConfig, data_dir: Path, out: Path, *, resume: bool = False, progress: bool = True,
             init_checkpoint: Path | None = None) -> dict:
    """Pre-train; returns the last evaluation. Writes ``out/final`` (transformers folder) at the end."""
    with torch_threads(config.train.threads):  # the run's own count (the result depends on it), the caller's given back
        if config.model.family == "llava":  # grown in stages, each cached by what it depends on (training/llava.py)
            from training.llava import pretrain_llava

            if init_checkpoint is not None:
                raise VbProbeError("--init: a LLaVA is grown from its own stages; leave --init out")
            claim_run_folder(Path(out), resume=True)  # its stages are reused by key: a rerun goes on
            return pretrain_llava(config, Path(data_dir), Path(out), progress=progress)
        return _pretrain(config, data_dir, out, resume=resume, progress=progress, init_checkpoint=init_checkpoint)


def _pretrain(config: TrainConfig, data_dir: Path, out: Path, *, resume: bool, progress: bool,
              init_checkpoint: Path | None) -> dict:
    from tqdm.auto import tqdm

    t = config.train
    device = resolve_device(t.device)
    dd = setup_distributed(t.device)
    if t.batch_size % (t.grad_accum * dd.world):
        raise VbProbeError(f"train.batch_size {t.batch_size} must divide by grad_accum × processes "
                           f"({t.grad_accum} × {dd.world})")
    data_dir, out = Path(data_dir), Path(out)
    claim_run_folder(out, resume)
    tokenizer = load_tokenizer(data_dir / config.data.tokenizer)
    vilt = config.model.family == "vilt"
    processor = image_processor_for(config) if vilt else None
    data = PretrainData(data_dir, config.data, tokenizer, cache_dir=out / "cache", processor=processor)
    start_step = 0
    state = latest_checkpoint(out) if resume else None
    if state is not None:  # the run's own resolved config; only the step count may be extended
        config = check_resumed_config(config_from_dict(state["config"]), config, out)
        t = config.train
        start_step = state["step"]
    if vilt and init_checkpoint is not None:
        raise VbProbeError("--init: continuing from a checkpoint is for VisualBERT; a ViLT pre-training starts from "
                           "random weights (or resumes its own run with --resume)")
    model = (build_vilt(config, len(tokenizer)) if vilt else
             starting_model(config, init_checkpoint, tokenizer, data.visual_dim)).to(device)
    optimizer = make_optimizer(model, t)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
    trained = torch.nn.parallel.DistributedDataParallel(model) if dd.world > 1 else model
    if t.compile != "off":  # evaluation and saving keep using the plain module, which shares the weights
        trained = torch.compile(trained, mode=None if t.compile == "default" else t.compile)
    cuda_graphs = t.compile == "reduce-overhead" and device.type == "cuda"
    model.train()
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, start_step, dd.main)
    bar = tqdm(total=t.steps, initial=start_step, desc="pre-training", unit="step", disable=not (progress and dd.main))
    saved = {"step": start_step, "at": time.monotonic()}  # the newest checkpoint (the one resumed from, or none)
    try:
        last_eval = _train_steps(trained, model, optimizer, data, config, dd, device, cuda_graphs, out, log, bar,
                                 start_step, saved)
    except (KeyboardInterrupt, Terminated):
        if dd.main:
            bar.close()
            reached = log.history[-1]["step"] if log.history else start_step
            print(interrupted_line(out, saved, reached), file=sys.stderr)
        raise
    bar.close()
    if dd.main:
        log.save()
        extra = {"training_config.json": json.dumps(config.to_dict(), indent=2)}
        if vilt:
            save_vilt(model, out / "final", tokenizer, processor, extra)
        else:
            save_pretraining_model(model, out / "final", tokenizer=tokenizer, extra_files=extra)
        log.close()
    if dd.world > 1:
        dist.barrier()
    return {"history": log.history, "eval": last_eval, "skipped_images": data.skipped_images}


def _train_steps(trained, model, optimizer, data, config: TrainConfig, dd, device, cuda_graphs: bool, out: Path,
                 log, bar, start_step: int, saved: dict) -> dict:
    """Steps ``start_step`` … ``train.steps``: a checkpoint every ``save_every`` steps, at the last, and whenever
    ``save_every_s`` seconds have passed since the newest (``saved``: its step and time, kept up to date for the
    message of an interrupted run). Returns the last evaluation."""
    t = config.train
    last_eval: dict = {}
    for step in range(start_step, t.steps):
        torch.manual_seed(t.seed * 1_000_003 + step * 101 + dd.rank)  # dropout depends on the step only
        lr = lr_at(step, t.steps, t.lr, t.warmup_frac)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [data.batch(step, config.objective, t, rank=dd.rank, world=dd.world,
                                    micro=(m, t.grad_accum), device=device) for m in range(t.grad_accum)]
        totals, grad_norm = train_step(trained, model, optimizer, micro_batches, t, dd, device, cuda_graphs)
        row = {"step": step + 1, "lr": lr, "loss": totals[0], "mlm_loss": totals[1], "sip_loss": totals[2],
               "grad_norm": grad_norm}
        if (step + 1) % t.eval_every == 0 or step + 1 == t.steps:
            last_eval = evaluate(model, data, config, device)
            row.update(last_eval)
        bar.update(1)
        bar.set_postfix(loss=f"{totals[0]:.3f}", **({"ent": f"{last_eval.get('eval_entity_acc', 0):.2f}"} if last_eval else {}))
        log.record(row)
        due = (step + 1) % t.save_every == 0 or step + 1 == t.steps or \
            (t.save_every_s > 0 and time.monotonic() - saved["at"] >= t.save_every_s)
        if dd.main and due:
            log.save()
            save_checkpoint(out, step + 1, model, optimizer, config)
            saved.update(step=step + 1, at=time.monotonic())
    return last_eval


def interrupted_line(out: Path, saved: dict, step_reached: int) -> str:
    """What an interrupted pre-training says: where it stopped, and what a rerun will do (go on from the newest
    checkpoint, or start again when there is none)."""
    if saved["step"] > 0:
        ago = time.monotonic() - saved["at"]
        return (f"pre-training stopped after step {step_reached}; the checkpoint of step {saved['step']} "
                f"({ago:.0f} s before) is kept in {checkpoint_dir(out)}: a rerun (vb-train: with --resume) goes on "
                "from there")
    return f"pre-training stopped after step {step_reached}, before its first checkpoint: a rerun starts from step 0"


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional; the CSV log always exists
        return None
    return SummaryWriter(str(out / "tensorboard"))


LOG_COLUMNS = ["step", "lr", "loss", "mlm_loss", "sip_loss", "grad_norm", "eval_mlm_acc", "eval_entity_acc",
               "eval_entity_no_image_acc", "eval_sip_acc"]


def _write_log(path: Path, history: list[dict]) -> None:
    write_csv(path, LOG_COLUMNS, [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
                                  for row in history])


def _read_log(path: Path, up_to_step: int) -> list[dict]:
    """Rows of an earlier run up to the step a resumed run starts from (so the log has no gaps or repeats)."""
    if up_to_step == 0 or not path.is_file():
        return []
    with open(path) as handle:
        rows = [{k: (float(v) if k != "step" else int(v)) for k, v in r.items() if v not in ("", None)}
                for r in csv.DictReader(handle)]
    return [r for r in rows if r["step"] <= up_to_step]
