"""Everything a probe run depends on (:class:`ProbeConfig`), checked in one place (:meth:`ProbeConfig.check`): the
CLI, the API verbs and the demo all build one, and ``run.json`` records it. No torch here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from vb_probe.data.annotations import QUERY_WORDS
from vb_probe.errors import VbProbeError

MaskMode = Literal["posthoc", "intervene"]
Precision = Literal["fp32", "bf16"]
MASKS = ("posthoc", "intervene")
PRECISIONS = ("fp32", "bf16")
ENTROPY_NAMES = ("paper", "released-mean", "released")  # the keys of vb_probe.metrics.readouts.ENTROPY_VARIANTS


@dataclass(frozen=True)
class ProbeConfig:
    """Everything a probe run depends on; recorded in run.json."""

    ckpt: Path | str | None = None  # a folder or hub id; None when the model is given in memory
    annotations: Path | None = None  # the annotation set's root (any format); None when a reader is given
    features: Path | None = None  # region features, for families that read regions (None when a store is given)
    images: Path | None = None  # an images folder, for families that read pixels (ViLT, the decoders)
    split: str | None = None  # None: the set's own test split (RefCOCO unc: testA)
    tokenizer: Path | None = None
    visual_token_type: int | None = None
    mask: MaskMode = "posthoc"
    # bf16: the forward under bf16 autocast (the probed rows themselves still in fp32); fast on GPUs, and
    # near-ties between regions may then break differently from fp32
    precision: Precision = "fp32"
    batch_size: int = 32
    device: str = "cpu"
    limit: int | None = None
    confidence: str | None = None
    skip_unannotated: bool = False
    skip_missing_features: bool = False
    max_text_len: int = 128
    select_on: str | None = None
    control: bool = False
    seed: int = 0
    entity: bool = True
    relations: tuple[str, ...] = ()
    parses: Path | None = None
    parser: Literal["spacy"] | None = None
    spacy_model: str | None = None
    parse_cache: Path | None = None
    # decoder families: how many entity queries of the probed split feed the unsupervised selection of localization
    # heads, and how the weights are spread over devices (accelerate's device_map, e.g. "auto")
    localization_prompts: int = 500
    device_map: str | None = None
    # the annotations' format (None: told by the files); RefCOCO's split_by (unc, umd, google; None: what the folder
    # has); the entity query word: "last" (the phrase's last word) or "head" (its head in its parse); None: the
    # annotation set's own default (Flickr30K: last, the paper's; RefCOCO and Visual Genome: head)
    dataset_format: str | None = None
    split_by: str | None = None
    query_word: Literal["last", "head"] | None = None
    # auditing a run: one record a query (word, token, every head's pick and hit, or the skip reason), and the maps
    # of these (layer, head) pairs with their cells
    per_query: bool = False
    save_maps: tuple[tuple[int, int], ...] = ()
    # decoder families: the prompt around the caption: a preset (chat: the model's own chat template, the default;
    # plain; kang: Kang et al.'s) or a text holding {image} and {caption}; None: the family's own
    prompt: str | None = None
    # decoder families: the spatial entropy that chooses Kang et al.'s heads (vb_probe.metrics.readouts: paper, by
    # area above the mean; released-mean, by mass; released, by mass above 2 × mean)
    entropy: str = "paper"
    # decoder families: how the image is read (processor: as the processor is saved; LLaVA: pad, its own code's
    # square, or crop, transformers' centre crop), and the query row: the entity's word ("word") or the prompt's
    # last token ("end", Kang et al.'s); None: "end" under --prompt kang, else "word"
    view: str = "processor"
    query_row: Literal["word", "end"] | None = None
    # decoder families: the sink audit (Kang et al., ICLR 2025) beside every pass, with the sink dimensions given
    # (empty: found from the model)
    sinks: bool = False
    sink_dims: tuple[int, ...] = ()

    def check(self) -> ProbeConfig:
        """Every option in range, as one line naming the option; returns the config (a refusal comes before any
        file is read or model loaded)."""
        if self.batch_size < 1:
            raise VbProbeError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise VbProbeError(f"--limit {self.limit}: must be at least 1 image (leave it out to use the whole split)")
        if self.mask not in MASKS:
            raise VbProbeError(f"--mask {self.mask}: use posthoc or intervene")
        if self.precision not in PRECISIONS:
            raise VbProbeError(f"--precision {self.precision}: use fp32 or bf16")
        if self.query_word is not None and self.query_word not in QUERY_WORDS:
            raise VbProbeError(f"--query-word {self.query_word}: use last or head")
        if self.localization_prompts < 1:
            raise VbProbeError(f"--localization-prompts {self.localization_prompts}: must be at least 1")
        if not self.entity and not self.relations:
            raise VbProbeError("nothing to probe: ask for entity grounding or at least one --relation")
        if any(len(pair) != 2 or min(pair) < 0 for pair in self.save_maps):
            raise VbProbeError(f"--save-maps {self.save_maps}: name heads as L<layer>H<head>, e.g. L8H6")
        if self.prompt is not None and not self.prompt.strip():
            raise VbProbeError("--prompt '': give a preset (chat, plain, kang) or a text holding {image} and {caption}")
        if self.entropy not in ENTROPY_NAMES:
            raise VbProbeError(f"--entropy {self.entropy}: use {', '.join(ENTROPY_NAMES)}")
        if any(d < 0 for d in self.sink_dims):
            raise VbProbeError(f"--sink-dims {list(self.sink_dims)}: hidden dimensions are 0 or more")
        if self.query_row not in (None, "word", "end"):
            raise VbProbeError(f"--query-row {self.query_row}: use word (the entity's word) or end (the prompt's last "
                               "token)")
        if self.parser not in (None, "spacy"):
            raise VbProbeError(f"--parser {self.parser}: use spacy, or pass --parses FILE.conllu")
        return self


OPTIONS = tuple(f.name for f in fields(ProbeConfig))

# options added after run.json's config was fixed: recorded only when they differ from these defaults
_LATER_OPTIONS = {"localization_prompts": 500, "device_map": None, "dataset_format": None, "split_by": None,
                  "query_word": None, "per_query": False, "save_maps": (), "prompt": None, "entropy": "paper",
                  "view": "processor", "query_row": None, "sinks": False, "sink_dims": ()}


def option(options: dict, name: str):
    """Option ``name`` of a :func:`config_dict` (later options are recorded only where set: their default else)."""
    return options[name] if name in options else _LATER_OPTIONS[name]


def config_dict(cfg: ProbeConfig) -> dict:
    """``cfg`` as run.json records it (paths resolved, tuples as lists, later options only where set)."""
    return {k: (str(Path(v).resolve()) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(cfg).items() if k not in _LATER_OPTIONS or v != _LATER_OPTIONS[k]}


__all__ = ["ENTROPY_NAMES", "MASKS", "OPTIONS", "PRECISIONS", "MaskMode", "Precision", "ProbeConfig", "config_dict",
           "option"]
