"""Training configuration: frozen dataclasses read from TOML, overridden by ``--set section.key=value``.

Each component receives only its own section. The resolved config is saved with every checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from importlib.resources import files
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

from vb_probe.errors import VbProbeError


@dataclass(frozen=True)
class ModelSection:
    """Shape and initialisation. ``init``: ``random`` or ``bert:<folder>`` (any BertModel checkpoint)."""

    hidden_size: int = 192
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 768
    max_position_embeddings: int = 128
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    init: str = "random"
    early_fusion: bool = True
    # vilt: image patches from data.images, not regions; llava: a LLaVA grown in stages ([llava], training/llava.py)
    family: Literal["visualbert", "vilt", "llava"] = "visualbert"
    patch_size: int = 32  # vilt: patch side in pixels
    image_size: int = 384  # vilt: the image processor's shortest edge (longest ≤ 1333/800 of it)
    # vilt: "colour" starts 12 patch-embedding channels as the mean red, green and blue of each patch quadrant (a
    # stand-in for the ImageNet ViT that ViLT starts from: a model learning to see from nothing on 2 cores does not)
    patch_init: Literal["random", "colour"] = "random"


@dataclass(frozen=True)
class ObjectiveSection:
    """The paper's objectives and the ablation switches.

    ``masking``: ``uniform`` (BERT's 15%) or ``entity`` (nouns ``entity_prob``, other content words
    ``content_prob``, the rest ``other_prob``). ``sentence_image``: ``pair`` (the paper's: two captions,
    the second from the same image or another, p=1/2), ``itm`` (one caption, matching or not), or ``none``
    ("w/o objective 2"). ``grounded = false`` is text-only pre-training ("w/o grounded pre-training").
    """

    masking: Literal["uniform", "entity"] = "entity"
    mask_prob: float = 0.15
    entity_prob: float = 0.4
    content_prob: float = 0.25
    other_prob: float = 0.1
    whole_word: bool = False
    sentence_image: Literal["pair", "itm", "none"] = "pair"
    grounded: bool = True


@dataclass(frozen=True)
class TrainSection:
    steps: int = 600
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_frac: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    eval_every: int = 100
    eval_batches: int = 4
    save_every: int = 100
    # also checkpoint when this many seconds have passed since the last one: an interrupted run loses at most this
    # much (0: by step only); when a checkpoint is written changes nothing the run computes
    save_every_s: float = 60.0
    seed: int = 0
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    max_regions: int = 100
    max_text_len: int = 64
    device: str = "cpu"
    # torch's threads (0: its default, one a core). The count is part of the result: each count sums in another
    # order, and runs part after a few hundred steps; the demo's configs fix it (bench/demo_threads.py)
    threads: int = 0
    # torch.compile of the training forward/backward: "off", "default", "reduce-overhead" (CUDA graphs; GPU) or
    # "max-autotune"; bench/train_step.py measures what each buys
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"


@dataclass(frozen=True)
class DataSection:
    """``captions``: Karpathy JSON relative to --data; ``features``: TSV/HDF5/npz relative to --data."""

    captions: str = "dataset_coco.json"
    features: str = "features.tsv"
    tokenizer: str = "tokenizer"
    images: str = "images"  # vilt: the images folder
    train_splits: tuple[str, ...] = ("train", "restval")
    eval_split: str = "val"


@dataclass(frozen=True)
class LlavaSection:
    """The LLaVA grown on the world (``model.family = "llava"``): its vision tower and language model, and each
    stage's steps and learning rate (training/llava.py)."""

    image_size: int = 112
    patch_size: int = 14
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    batch_size: int = 32
    lm_steps: int = 300
    lm_lr: float = 1e-3
    clip_steps: int = 600
    clip_lr: float = 1e-3
    align_steps: int = 200
    align_lr: float = 1e-3
    caption_steps: int = 800
    caption_lr: float = 5e-4


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)
    llava: LlavaSection = field(default_factory=LlavaSection)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def digest(self) -> str:
        """Hash of everything that changes the trained weights (the demo caches models by it). The keys that only a
        ViLT reads are left out of a VisualBERT's hash (its cached models stay valid)."""
        values = self.to_dict()
        for section, key in NOT_WEIGHTS:
            values[section].pop(key)
        if self.model.family == "visualbert":
            for section, key in VILT_ONLY:
                values[section].pop(key)
        if self.model.family != "llava":  # a section only the LLaVA reads: the other models' hashes stay as they were
            values.pop("llava")
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


NOT_WEIGHTS = (("train", "save_every"), ("train", "save_every_s"))  # when checkpoints are written: not the weights
VILT_ONLY = (("model", "family"), ("model", "patch_size"), ("model", "image_size"), ("model", "patch_init"),
             ("data", "images"))


_SECTIONS = {"model": ModelSection, "objective": ObjectiveSection, "train": TrainSection, "data": DataSection,
             "llava": LlavaSection}


def _coerce(section: str, key: str, value, target_type, source: str):
    expected = {int: int, float: (int, float), bool: bool, str: str}
    if isinstance(value, str) and target_type is not str:
        try:
            value = json.loads(value.lower() if target_type is bool else value)
        except json.JSONDecodeError:
            raise VbProbeError(f"{source}: {section}.{key}={value!r} is not a {target_type.__name__}") from None
    if target_type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if target_type is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise VbProbeError(f"{source}: {section}.{key}={value!r} should be a list of names, e.g. [\"train\"]")
        return tuple(value)
    wanted = expected.get(target_type)
    if wanted is not None and (not isinstance(value, wanted) or (target_type is int and isinstance(value, bool))):
        raise VbProbeError(f"{source}: {section}.{key}={value!r} should be a {target_type.__name__}")
    return value


def _choices(cls, key: str) -> tuple:
    """The allowed values of a ``Literal[...]`` field (empty for other fields)."""
    hint = get_type_hints(cls)[key]
    return get_args(hint) if get_origin(hint) is Literal else ()


def _field_type(cls, key: str):
    default = getattr(cls(), key)
    return tuple if isinstance(default, tuple) else type(default)


def packaged_configs() -> dict[str, Path]:
    """The configs that travel with the package (``training/configs/<name>.toml``), by name."""
    folder = files("training") / "configs"
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".toml")}


def config_file(name_or_path: str | Path) -> Path:
    """A TOML path as given, or a packaged config by name (``demo``, ``tasks``, ``paper``)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix == ".toml" or len(path.parts) > 1:
        return path
    packaged = packaged_configs()
    if str(name_or_path) in packaged:
        return packaged[str(name_or_path)]
    raise VbProbeError(f"--config {name_or_path}: neither a file nor a packaged config; use a TOML path or one of "
                       f"{', '.join(sorted(packaged))}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A TOML file or packaged config name (sections model/objective/train/data) plus ``section.key=value``
    overrides."""
    raw: dict[str, dict] = {}
    source = str(path) if path else "defaults"
    if path is not None:
        path = config_file(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise VbProbeError(f"{path}: config file not found; pass --config demo (a packaged config) or a TOML "
                               "path") from None
        except IsADirectoryError:
            raise VbProbeError(f"{path}: is a folder; pass --config with a TOML file, or demo, vilt, tasks or paper") from None
        except UnicodeDecodeError as exc:
            raise VbProbeError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8, re-save it") from None
        except tomllib.TOMLDecodeError as exc:
            raise VbProbeError(f"{path}: not valid TOML ({exc}); see training/configs/demo.toml for the layout") from None
        except RecursionError:
            raise VbProbeError(f"{path}: nested too deeply to be a config; see training/configs/demo.toml for the "
                               "layout") from None
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise VbProbeError(f"--set {item!r}: expected section.key=value, e.g. train.steps=300")
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    built = {}
    for section, values in raw.items():
        if section not in _SECTIONS:
            raise VbProbeError(f"{source}: unknown section [{section}]; sections are {', '.join(_SECTIONS)}")
        if not isinstance(values, dict):
            raise VbProbeError(f"{source}: {section} = {values!r} should be a table [{section}] of keys")
        cls = _SECTIONS[section]
        names = {f.name for f in fields(cls)}
        checked = {}
        for key, value in values.items():
            if key not in names:
                raise VbProbeError(f"{source}: unknown key {section}.{key}; keys are {', '.join(sorted(names))}")
            checked[key] = _coerce(section, key, value, _field_type(cls, key), source)
            choices = _choices(cls, key)
            if choices and checked[key] not in choices:
                raise VbProbeError(f"{source}: {section}.{key}={checked[key]!r}; choose one of {', '.join(choices)}")
        built[section] = replace(cls(), **checked)
    config = TrainConfig(**built)
    _validate(config, source)
    return config


# (section, key) → (lowest, highest, whether the lowest itself is allowed), for every number a run depends on
_RANGES: dict[tuple[str, str], tuple[float, float, bool]] = {
    **{("model", k): (1, 1e6, True) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                              "intermediate_size", "max_position_embeddings", "patch_size",
                                              "image_size")},
    ("model", "hidden_dropout_prob"): (0, 1, True), ("model", "attention_probs_dropout_prob"): (0, 1, True),
    **{("objective", k): (0, 1, True) for k in ("entity_prob", "content_prob", "other_prob")},
    ("objective", "mask_prob"): (0, 1, False),
    **{("train", k): (1, 1e12, True) for k in ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches",
                                               "save_every", "max_regions", "max_text_len")},
    ("train", "lr"): (0, 1, False), ("train", "warmup_frac"): (0, 1, True), ("train", "weight_decay"): (0, 1e3, True),
    ("train", "clip_norm"): (0, 1e6, True), ("train", "seed"): (0, 2**32 - 1, True), ("train", "threads"): (0, 4096, True),
    ("train", "save_every_s"): (0, 1e9, True),
    **{("llava", k): (1, 1e6, True) for k in ("image_size", "patch_size", "vision_hidden", "vision_layers",
                                              "vision_heads", "text_hidden", "text_layers", "text_heads",
                                              "batch_size")},
    **{("llava", k): (0, 1e9, True) for k in ("lm_steps", "clip_steps", "align_steps", "caption_steps")},
    **{("llava", k): (0, 1, False) for k in ("lm_lr", "clip_lr", "align_lr", "caption_lr")},
}


def _validate(config: TrainConfig, source: str) -> None:
    for (section, key), (low, high, low_ok) in _RANGES.items():
        value = getattr(getattr(config, section), key)
        if not (low <= value <= high) or (value == low and not low_ok) or value != value:  # value != value: NaN
            bound = f"{'at least' if low_ok else 'above'} {low:g}" + (f" and at most {high:g}" if high < 1e6 else "")
            raise VbProbeError(f"{source}: {section}.{key}={value!r} must be {bound}; fix the value")
    m = config.model
    if m.hidden_size % m.num_attention_heads:
        raise VbProbeError(f"{source}: model.hidden_size {m.hidden_size} is not a multiple of num_attention_heads "
                           f"{m.num_attention_heads}")
    if m.max_position_embeddings < config.train.max_text_len:
        raise VbProbeError(f"{source}: model.max_position_embeddings={m.max_position_embeddings} is fewer than the "
                           f"{config.train.max_text_len} text tokens a caption is cut to (train.max_text_len); raise it "
                           "or lower train.max_text_len")
    v = config.llava
    if m.family == "llava" and (v.image_size % v.patch_size or v.vision_hidden % v.vision_heads
                                or v.text_hidden % v.text_heads):
        raise VbProbeError(f"{source}: llava.image_size must be a multiple of llava.patch_size and each hidden size of "
                           "its heads; fix the values")
    if m.family == "vilt" and m.patch_size > m.image_size:
        raise VbProbeError(f"{source}: model.patch_size={m.patch_size} is larger than model.image_size={m.image_size}; "
                           "an image would have no patch")


def config_from_dict(data: dict) -> TrainConfig:
    """Inverse of :meth:`TrainConfig.to_dict` (used when resuming from a checkpoint)."""
    return TrainConfig(**{name: replace(cls(), **{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in data.get(name, {}).items()})
                          for name, cls in _SECTIONS.items()})
