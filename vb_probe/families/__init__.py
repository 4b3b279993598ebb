"""Model families: the probe engine knows no model; a family is one module behind :class:`Family`, found through
one registry (``@register_family``), as the trainer's tasks are.

A family owns everything that differs between vision-language transformers: recognising and loading its
checkpoints and in-memory objects, turning probe items into the model's inputs plus a layout (which sequence
positions are the query words' last sub-words, which are image tokens, and each image token's box in the
original image's pixels), the attention *sites* it exposes, the rows of every head from the query positions to
the image tokens, a random-initialised twin for the control, and the facts of its inputs that ``run.json``
records. Queries, counts, results, figures and the explorer stay family-free.

Adding a family: one module (or package) under ``vb_probe/families`` with a class that subclasses
:class:`~vb_probe.families.base.FamilyBase` (every optional member is declared there with its default), decorated
with ``@register_family`` (found and imported on first use), or the same class in the user's own code,
imported before probing.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vb_probe.families.base import MODEL_ATTRIBUTES, FamilyBase, Site, model_type_of, pin

Family = FamilyBase  # the name the engine's annotations use
__all__ = ["FAMILIES", "MODEL_ATTRIBUTES", "Family", "FamilyBase", "Site", "check_scores_fit", "family_of",
           "family_rule", "head_shape",
           "image_tokens", "items_image_tokens", "known_families", "model_type_of", "open_inputs", "pin",
           "quiet_loading", "reads_pixels", "register_family"]

FAMILIES: dict[str, Family] = {}


def register_family(cls: type) -> type:
    """Class decorator: one instance of ``cls`` (a :class:`FamilyBase`) joins the registry under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, FamilyBase)):
        raise TypeError(f"{getattr(cls, '__name__', cls)!s}: a model family subclasses vb_probe.families.FamilyBase")
    FAMILIES[cls.name] = cls()
    return cls


def _load_builtin_families() -> None:
    """Import every module and package under ``vb_probe/families`` once: each registers its family."""
    import pkgutil
    from importlib import import_module

    for module in pkgutil.iter_modules(__path__):
        import_module(f"{__name__}.{module.name}")


def known_families() -> dict[str, Family]:
    """Every registered family by name: the built-in ones and any a user's code registered."""
    _load_builtin_families()
    return dict(FAMILIES)


def family_of(source: dict | Any, where: str = "the model") -> Family:
    """The family that recognises ``source`` (a ``config.json`` dict or a model object); a one-line error
    naming what was found and what is known otherwise."""
    from vb_probe.errors import CheckpointError

    _load_builtin_families()
    for family in FAMILIES.values():
        if family.recognise(source):
            return family
    ordered = sorted(FAMILIES.values(), key=lambda f: (f.name != "visualbert", f.name))  # the same whatever came first
    types = [t for f in ordered for t in f.types()]
    known = ", ".join(repr(t) for t in types[:-1]) + f" or {types[-1]!r}" if len(types) > 1 else repr(types[0])
    found = model_type_of(source)
    if isinstance(source, dict):
        hint = (" (a BERT folder initialises pre-training with `vb-train pretrain --set model.init=bert:<folder>`)"
                if found == "bert" else "")
        raise CheckpointError(f"{where}: model_type is {found!r}, expected {known}; pass a checkpoint of a model "
                              f"family vb-probe knows{hint}")
    raise CheckpointError(f"{type(source).__name__}: not a model vb-probe knows (config.model_type {found!r}, "
                          f"expected {known}); pass a checkpoint folder, a hub id, or a model object of a known family")


def family_rule(family: Family) -> str:
    """The rule a family's heads are scored by: ``iou`` (detector regions, the paper's) unless it says
    ``pointing`` (patches, rarely IoU ≥ 0.5 with a box)."""
    return family.rule


def reads_pixels(family: Family) -> bool:
    """Whether ``family`` reads images (``--images``) rather than region features (``--features``)."""
    return family.reads == "pixels"


def open_inputs(family: Family, features: Any = None, images: Any = None, confidence: str | None = None):
    """What ``family`` reads the images through: a region feature store (``features``: a path or a store) or an
    image folder (``images``: a path or an :class:`~vb_probe.data.images.ImageFolder`); a one-line error when the
    needed one is not given."""
    from vb_probe.data.features import open_features
    from vb_probe.data.images import ImageFolder
    from vb_probe.errors import VbProbeError

    if reads_pixels(family):
        if images is None:
            raise VbProbeError(f"--images: a {family.name} model reads the images themselves; pass --images FOLDER "
                               "(the images as <image_id>.jpg or .png)")
        return ImageFolder(images) if isinstance(images, (str, Path)) else images
    if features is None:
        raise VbProbeError(f"--features: a {family.name} model reads detector regions; pass --features (an LXMERT "
                           ".tsv, a BAN .h5 or a folder of .npz)")
    return open_features(features, confidence) if isinstance(features, (str, Path)) else features


def image_tokens(family: Family, model, store, image_id: str):
    """One image's tokens as :class:`~vb_probe.data.features.Regions` (boxes in the original image's pixels):
    the feature file's regions, or the cells a pixel family's processor makes of the image."""
    return family.image_tokens(model, store, image_id)


def items_image_tokens(family: Family, model, items, store, kind: type) -> list:
    """Each item's image tokens for a pixel family: those the item carries (an instance of ``kind``), else the
    family's :meth:`image_tokens` of its image from ``store``, made once per image of the batch."""
    made: dict[str, Any] = {}
    for item in items:
        if isinstance(item.regions, kind):
            made[item.image_id] = item.regions
        elif item.image_id not in made:
            made[item.image_id] = family.image_tokens(model, store, item.image_id)
    return [made[item.image_id] for item in items]


@contextmanager
def quiet_loading():
    """transformers' loading report and progress bar silenced (a task model's unused head weights are expected
    when its encoder is loaded; vb-probe says so in one note instead), then restored."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def head_shape(model) -> tuple[int, int]:
    """(layers, heads) of the model's first attention site: the shape of its score tables."""
    return family_of(model).sites(model)[0].shape


def check_scores_fit(scores, model, source) -> None:
    """Scores (a :class:`~vb_probe.results.GroundingResult`) made on another shape, family or model type than
    ``model`` (a LLaVA run drawn over a Qwen2-VL model of the same shape) would show or ablate the wrong heads:
    refused in one line naming both."""
    from vb_probe.errors import DataError
    from vb_probe.results import check_scores_shape

    check_scores_shape(scores.shape, head_shape(model), source)
    family, kind = family_of(model).name, model_type_of(model)
    theirs_family, theirs_kind = scores.provenance.get("family"), scores.provenance.get("model_type")
    if (theirs_family and theirs_family != family) or (theirs_kind and kind and theirs_kind != kind):
        raise DataError(f"--scores {source}: the scores are of a {theirs_kind or theirs_family} model but this model is "
                        f"a {kind or family}; pass the scores of this checkpoint")
