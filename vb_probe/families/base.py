"""What a model family offers the engine, declared in one place: :class:`FamilyBase`, whose every optional member
has its default here, so the engine, the API and the CLI ask a family directly and never guess with ``getattr``.

A family subclasses it, sets its name and model types, and implements the six members every family has
(:meth:`load`, :meth:`sites`, :meth:`prepare`, :meth:`text_limit`, :meth:`collate`, :meth:`rows`, :meth:`twin`);
whatever it brings beyond them (reading pixels, the pointing rule, loading across devices, a tokenizer of its own,
a masked-LM head, checks of its images) is a declared member it overrides. The attributes a family pins on the
model objects it loads are declared here too (:data:`MODEL_ATTRIBUTES`, :func:`pin`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # the engine's types, for annotations only (no import at run time: no cycle)
    import torch

    from vb_probe.batching import ProbeBatch
    from vb_probe.data.features import RegionFeatures, Regions
    from vb_probe.queries import ProbeItem


@dataclass(frozen=True)
class Site:
    """A stack of attention that can be probed: ``name`` ("self" for a single-stream model, "cross" for a
    dual-stream model's language-to-vision layers), ``layers`` × ``heads``."""

    name: str
    layers: int
    heads: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.layers, self.heads)


# What a family pins on a model object it loads, with the default an object from elsewhere gets (:func:`pin`):
# where it was loaded from (None: built in memory), the lines to show once, and what the family itself keeps there.
MODEL_ATTRIBUTES: dict[str, Any] = {
    "checkpoint_path": None,  # Path | None: the folder the weights were read from
    "load_notes": list,  # list[str]: what loading decided on the user's behalf, shown once
    "tokenizer_path": None,  # Path | None: the tokenizer a fine-tuned model was trained with (VisualBERT)
    "image_processor": None,  # ViLT: its image processor
    "processor": None,  # decoders: their processor (tokenizer, image processor, chat template)
    "prompt_template": None,  # decoders: the prompt rendered once at load
    "saved_image_processor": None,  # decoders: the image processor as loaded, put back by --view processor
}


def pin(model, **values) -> Any:
    """``model`` with every :data:`MODEL_ATTRIBUTES` entry set: ``values`` where given, else what it already has,
    else the default. Returns ``model``."""
    unknown = set(values) - set(MODEL_ATTRIBUTES)
    if unknown:
        raise TypeError(f"not a declared model attribute: {', '.join(sorted(unknown))}")
    for name, default in MODEL_ATTRIBUTES.items():
        if name in values:
            setattr(model, name, values[name])
        elif name not in vars(model):
            setattr(model, name, default() if callable(default) else default)
    return model


def settings_json(value: Any) -> Any:
    """A processor's setting as run.json holds it: JSON types as they are, dicts and transformers' ``SizeDict``
    (a dataclass) as objects without their unset fields, sequences as lists, anything else as its text."""
    import dataclasses

    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: settings_json(v) for k, v in dataclasses.asdict(value).items() if v is not None}
    if isinstance(value, dict):
        return {str(k): settings_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [settings_json(v) for v in value]
    return str(value)


def model_type_of(source: dict | Any) -> str | None:
    """``model_type`` of a ``config.json`` dict, or of a model object's ``config`` (None when it has none)."""
    if isinstance(source, dict):
        value = source.get("model_type")
    else:  # any object: a model of any library, or none at all
        value = getattr(getattr(source, "config", None), "model_type", None)
    return value if isinstance(value, str) else None


class Tally:
    """A family's own measure of a probe pass, kept beside the counts (the decoders' fixed-position baseline and
    heads chosen without boxes). The engine makes one per pass (:meth:`FamilyBase.tally`), gives each batch an
    :meth:`empty` one to :meth:`add` to, and merges those in batch order (as it merges counts: so a resumed run and
    a run sharded under torchrun add the same things in the same order); its :meth:`state` goes into the progress
    file. At the end, :meth:`report` makes its block of ``run.json`` (under :attr:`key`) and :meth:`lines` its lines
    of the console summary. The engine reads no key of the batch a tally reads: ``batch.extras`` are the family's."""

    key: ClassVar[str]  # its block's name in run.json

    def empty(self) -> Tally:
        """A tally with nothing added, for one batch (with whatever budget this one has left)."""
        raise NotImplementedError

    def watching(self, model, batch: ProbeBatch) -> AbstractContextManager:
        """Entered around the batch's forward (on the batch's own :meth:`empty` tally): a tally that reads the
        model's hidden states hooks them here and removes its hooks on exit. Nothing by default."""
        return nullcontext()

    def add(self, batch: ProbeBatch, rows: torch.Tensor, mass: torch.Tensor, choice: torch.Tensor,
            hits: torch.Tensor) -> None:
        """One batch: ``rows`` [layer, n, head, R] every query's attention on the image tokens, ``mass`` and
        ``choice`` [layer, n, head] its image share and the argmax token, ``hits`` [n, R] which tokens hit gold under
        the family's rule; ``batch.groups`` [n] says which query is which."""
        raise NotImplementedError

    def merge(self, other: Tally) -> None:
        """Add ``other`` (another batch's) to this one."""
        raise NotImplementedError

    def finish(self) -> None:
        """After every batch was merged (in batch order): whatever cut the whole pass needs."""

    def state(self) -> dict:
        """JSON-able, exact (what the progress file keeps)."""
        raise NotImplementedError

    def restored(self, state: dict) -> Tally:
        """A tally of these settings holding ``state``."""
        raise NotImplementedError

    def report(self, counts, select: Tally | None, split: str, select_on: str | None) -> dict:
        """The run.json block: ``counts`` the pass's entity :class:`~vb_probe.metrics.grounding.HeadCounts`,
        ``select`` the selection split's tally (None without ``--select-on``)."""
        raise NotImplementedError

    @staticmethod
    def lines(block: dict) -> list[str]:
        """The console summary's lines for a report block."""
        return []


class FamilyBase:
    """A model family: everything that differs between vision-language transformers, behind one interface.

    Required: ``name``, ``model_type`` (config.json's ``model_type``) and the members that raise
    ``NotImplementedError`` here. Optional members have their defaults below; a family overrides what it brings.
    """

    name: ClassVar[str]
    model_type: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]] = ()  # every model_type it recognises (default: ``model_type`` alone)
    default_tokenizer: ClassVar[str | None] = None  # a hub id used when a checkpoint has no tokenizer (None: refuse)
    rule: ClassVar[str] = "iou"  # "iou" for detector regions (the paper's), "pointing" for patches and cells
    reads: ClassVar[str] = "regions"  # "regions" (--features) or "pixels" (--images)
    token_kind: ClassVar[str] = "regions"  # what its image tokens are called on figures and pages
    loads_across_devices: ClassVar[bool] = False  # load() accepts dtype and device_map (accelerate)
    has_masked_lm: ClassVar[bool] = False  # load_masked_lm and interventions exist (attribution, causal check)
    generates_text: ClassVar[bool] = False  # caption_log_probs exists (the causal check of a decoder)

    # ------------------------------------------------------------------------------------------- required

    def load(self, source: Path | Any, *, dtype: torch.dtype | None = None, device_map: str | dict | None = None):
        """The probe-ready model (eval mode untouched) from a checkpoint folder or an object in memory, with the
        :data:`MODEL_ATTRIBUTES` pinned. ``dtype`` and ``device_map`` only where :attr:`loads_across_devices`."""
        raise NotImplementedError

    def sites(self, model) -> list[Site]:
        """The attention sites, the one probed first."""
        raise NotImplementedError

    def prepare(self, model, store: RegionFeatures, options: dict) -> dict:
        """Check that ``model`` can be probed on ``store`` (region features, or images: its ``kind`` says) with
        ``options`` (the probe's configuration);
        return the facts of its inputs to record in ``run.json`` and to hand to :meth:`collate`."""
        raise NotImplementedError

    def text_limit(self, model) -> int:
        """How many text tokens the model takes at most."""
        raise NotImplementedError

    def collate(self, model, items: list[ProbeItem], tokenizer, facts: dict, max_text_len: int,
                store: RegionFeatures | None = None) -> ProbeBatch:
        """The model's inputs and the layout of ``items`` (queries, image tokens and their boxes), on the CPU."""
        raise NotImplementedError

    def rows(self, model, batch: ProbeBatch, site: Site, mask: str = "posthoc", precision: str = "fp32"
             ) -> torch.Tensor:
        """One forward; every head's attention from each query to the image tokens: [layer, n, head, R], fp32,
        on the CPU (padding tokens 0)."""
        raise NotImplementedError

    def twin(self, model, seed: int):
        """A random-initialised model of the same shape (the control)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- optional

    def types(self) -> tuple[str, ...]:
        """Every ``model_type`` this family recognises."""
        return self.model_types or (self.model_type,)

    def recognise(self, source: dict | Any) -> bool:
        """``source``: a checkpoint's ``config.json`` (a dict) or a model object in memory."""
        return model_type_of(source) in self.types()

    def tokenizer_of(self, model):
        """The tokenizer the model brings with it (a decoder's processor), or None: read from its files."""
        return None

    def image_tokens(self, model, store, image_id: str) -> Regions:
        """One image's tokens (boxes in the original image's pixels): the feature file's regions by default; a
        pixel family's processor cells."""
        return store[image_id]

    def image_size_problem(self, model, width: int, height: int) -> str | None:
        """Why the model's processor cannot take a ``width`` × ``height`` image (None: it can), asked of every
        image before the first forward."""
        return None

    def sequence_note(self, model, sizes: list[tuple[int, int]]) -> str | None:
        """A note on how long the model's sequences will be for images of these ``sizes`` (None: nothing to say);
        refuses (one line) what the model cannot take."""
        return None

    def tally(self, model, options: dict, pass_name: str) -> Tally | None:
        """A fresh :class:`Tally` of this family's own measure for one pass (``main``, ``select`` or ``control``)
        with the probe's ``options`` (its configuration), or None: the family brings none."""
        return None

    def summary_lines(self, result) -> list[str]:
        """Lines the console summary adds for a result's blocks of this family (its tally's)."""
        return []

    def page_marks(self, result) -> dict:
        """What the explorer marks for a result of this family, from its tally's block: ``selected_heads``
        ([layer, head, votes] chosen without boxes, with ``selected_by`` naming how) and ``fixed_place`` ({``row``,
        ``column``: fractions of the model's view; ``accuracy``; ``chosen_on``}). Empty: nothing to mark."""
        return {}

    def prompt_problem(self, model_type: str, prompt: str | None) -> str | None:
        """Why a model of ``model_type`` cannot read its captions in ``prompt`` (``--prompt``: a preset name or a
        text with ``{image}`` and ``{caption}``; None: the family's own); None when it can. Asked before the model
        loads. A family whose models read the caption alone takes no prompt."""
        if prompt is None:
            return None
        return f"a {self.name} model reads the caption alone, with no prompt around it; leave --prompt out"

    def use_prompt(self, model, prompt: str | None) -> None:
        """From now on ``model`` reads its captions in ``prompt`` (None: the family's own); every verb sets it, so
        a prompt asked of one call does not stay for the next. Refuses (one line) what :meth:`prompt_problem`
        refuses."""
        from vb_probe.errors import VbProbeError

        problem = self.prompt_problem(model_type_of(model) or self.model_type, prompt)
        if problem:
            raise VbProbeError(f"--prompt: {problem}")

    # where a query's attention row is read: the entity's word; a prompted family may also read the prompt's last
    # token ("end": Kang et al.'s query row, the token that would predict the answer)
    query_rows: ClassVar[tuple[str, ...]] = ("word",)
    # whether each query's rows lie on a grid of the image (the primary view's cells first, row-major) with the
    # batch's ``extras`` holding ``grids`` [B, 2] and ``image_sizes`` [B, 2]: what boxes are read from heads on
    maps_on_grid: ClassVar[bool] = False

    def sink_tally(self, model, dims: tuple[int, ...]) -> Tally | None:
        """The sink audit's tally for ``model`` (``--sinks``: hidden states read at the image tokens), or None where
        the family has no image tokens in a residual stream to read (the default)."""
        return None

    def views(self, model) -> tuple[str, ...]:
        """The image views :meth:`use_view` can set for ``model``: ``processor`` (as its processor is saved) and any
        other the family can read (LLaVA: ``pad``, its own code's square, and ``crop``, transformers' centre crop)."""
        return ("processor",)

    def use_view(self, model, view: str) -> None:
        """From now on ``model``'s images are read through ``view`` (one of :meth:`views`); refused in one line
        otherwise. Set by every verb before any image is read."""
        from vb_probe.errors import VbProbeError

        if view not in self.views(model):
            raise VbProbeError(f"--view {view}: a {model_type_of(model) or self.name} model's images are read as its "
                               f"processor reads them; use {' or '.join(self.views(model))}")

    def head_outputs(self, model) -> list[torch.nn.Module]:
        """Of each layer of the probed site, the module whose input is the heads' outputs side by side
        ([..., heads × d_head]): the attention's output projection, where :meth:`ablate_heads` zeroes a head.
        Empty: the family cannot ablate heads this way."""
        return []

    def ablate_heads(self, model, heads: Sequence[tuple[int, int]]) -> AbstractContextManager[None]:
        """While inside, each head ``(layer, head)`` of the probed site adds nothing to its layer's output: its
        slice of the output projection's input is zeroed (as zeroing its columns of the projection's weight would;
        :mod:`vb_probe.families.ablation`). Heads outside the model are refused in one line."""
        from vb_probe.errors import VbProbeError
        from vb_probe.families.ablation import heads_by_layer, zero_at_projections

        projections = self.head_outputs(model)
        if not projections:
            raise VbProbeError(f"the {self.name} family cannot ablate heads (it names no output projection)")
        site = self.sites(model)[0]
        return zero_at_projections(projections, heads_by_layer(heads, site.shape), site.heads)

    def caption_log_probs(self, model, batch: ProbeBatch, precision: str = "fp32") -> torch.Tensor:
        """[B] each batch row's mean log-probability (nats) of its caption's tokens, each given all before it (the
        image and the prompt): what ablating heads costs a model that generates text; only where
        :attr:`generates_text`."""
        from vb_probe.errors import VbProbeError

        raise VbProbeError(f"the {self.name} family does not generate text; its causal check is the masked-LM one")

    def load_masked_lm(self, source: Path):
        """The model with its masked-LM head (attribution and the causal check); only where :attr:`has_masked_lm`."""
        from vb_probe.errors import VbProbeError

        raise VbProbeError(f"{source}: the {self.name} family has no masked-LM head; attribution and the causal "
                           "check need one")

    @property
    def interventions(self):
        """The module with attribution and the causal check (``require_masked_lm``, ``masked_phrases``,
        ``attribute``, ``causal_check``); only where :attr:`has_masked_lm`."""
        from vb_probe.errors import VbProbeError

        raise VbProbeError(f"the {self.name} family has no masked-LM head; attribution and the causal check need one")
