"""The paper's figures from saved results: Figure 3 (heads × layers), Figure 4 (syntactic grounding per
layer), Figures 1 and 5 (attention on the image). ``vb-probe figures --results demo_out --out figures``
regenerates them; the demo draws the same set."""

from __future__ import annotations

from pathlib import Path

from vb_probe.atomic import atomic_files, check_outputs, writable_folder
from vb_probe.data.annotations import GroundingSet
from vb_probe.data.features import RegionFeatures
from vb_probe.data.grounding_sets import open_grounding_set
from vb_probe.errors import DataError
from vb_probe.results import GroundingResult, SyntacticResult


def example_captions(dataset: GroundingSet, split: str = "test", count: int = 2) -> list[tuple[str, int]]:
    """Captions of the split's first 40 images with the most phrases that have boxes (the most to look at)."""
    scored = []
    for image_id in dataset.split(split)[:40]:
        boxes = dataset.annotation(image_id).boxes
        for caption in dataset.captions(image_id):
            scored.append((sum(p.entity_id in boxes for p in caption.phrases), image_id, caption.index))
    scored.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [(image_id, index) for _, image_id, index in scored[:count]]


def figure_names(entity: GroundingResult, has_syntactic: bool, dataset: GroundingSet,
                 suffix: str = ".png") -> dict[str, tuple[str, int] | None]:
    """The files :func:`write_figures` writes: name → the (image id, caption index) an attention figure shows, or
    None for Figures 3 and 4. Known before anything is drawn, so an output folder is checked first."""
    names: dict[str, tuple[str, int] | None] = {f"fig3_entity_grounding{suffix}": None}
    if has_syntactic:
        names[f"fig4_syntactic{suffix}"] = None
    for number, (image_id, caption_index) in enumerate(example_captions(dataset, entity.split)):
        names[f"fig{1 if number == 0 else 5}_attention_{image_id}_{caption_index}{suffix}"] = (image_id, caption_index)
    return names


def write_figures(entity: GroundingResult, syntactic: SyntacticResult | None, model, tokenizer,
                  dataset: GroundingSet | Path, inputs: RegionFeatures | Path | None, out: Path,
                  images_dir: Path | None = None, suffix: str = ".png") -> list[str]:
    """Figures 1, 3, 4 and 5 into ``out``, written together (``dataset`` and ``inputs``, the region features or a
    pixel family's images: readers or their paths, opened once); returns the file names."""
    from vb_probe.api import open_session
    from vb_probe.visualize import attention_figure

    session = open_session(model, tokenizer, dataset, inputs if inputs is not None else images_dir)
    figures = {}
    for name, example in figure_names(entity, syntactic is not None, session.dataset, suffix).items():
        if example is None:
            figures[name] = entity.figure() if name.startswith("fig3") else syntactic.figure()
        else:
            figures[name] = attention_figure(session.model, session.tokenizer, session.dataset, session.store,
                                             *example, images_dir=images_dir or session.images_dir, scores=entity)
    with atomic_files(out) as staged:
        for name, figure in figures.items():
            staged.figure(name, figure)
    return list(figures)


def figures_from_results(results: Path, out: Path, images_dir: Path | None = None, suffix: str = ".png",
                         device: str = "cpu") -> list[str]:
    """Regenerate the figures of a demo output folder (``entity_grounding/`` and ``syntactic/`` inside it), of an
    entity-grounding ``--out`` folder (with the checkpoint, annotations and features its run.json names), or of a
    syntactic ``--out`` folder (its Figure 4, from its files alone)."""
    import warnings

    from vb_probe.api import load_model, load_tokenizer

    if (results / "syntactic.csv").is_file():  # a syntactic --out folder: its Figure 4, no model needed
        syntactic = SyntacticResult.load(results)
        name = f"fig4_syntactic{suffix}"
        check_outputs(out, [name])
        writable_folder(out)
        with atomic_files(out) as staged:
            staged.figure(name, syntactic.figure())
        return [name]
    if (results / "entity_grounding.csv").is_file():  # an entity-grounding --out folder itself
        entity, syntactic = GroundingResult.load(results), None
    else:  # a demo folder: entity_grounding/ and, when there, syntactic/
        entity = GroundingResult.load(results / "entity_grounding")
        syntactic = SyntacticResult.load(results / "syntactic") if (results / "syntactic" / "run.json").is_file() \
            else None
    config = entity.provenance.get("config", {})
    inputs = "images" if config.get("images") else "features"  # a model that reads pixels records its images
    annotations = config.get("annotations") or config.get("flickr30k")  # runs of earlier versions named it so
    missing = [k for k, v in (("ckpt", config.get("ckpt")), ("annotations", annotations), (inputs, config.get(inputs)))
               if not v]
    if missing:
        raise DataError(f"{results / 'entity_grounding' / 'run.json'}: records no {', '.join(missing)}; the attention "
                        "figures need the checkpoint and data of the run")
    dataset = open_grounding_set(annotations, config.get("dataset_format") or config.get("dataset"),
                                 split_by=config.get("split_by"))
    check_outputs(out, figure_names(entity, syntactic is not None, dataset, suffix))
    writable_folder(out)
    model = load_model(config["ckpt"], device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = load_tokenizer(config.get("tokenizer"), model=model)
    return write_figures(entity, syntactic, model, tokenizer, dataset, Path(config[inputs]), out, images_dir, suffix)
