"""The seams declared, and used from outside: a toy *pixel* family defined in this module (image cells of its own,
the pointing rule, a tally of its own) runs through the API, the CLI and the explorer with no edit outside this
file; a dataset's own default query word reaches run.json and changes the picks where the head is not the last
word; the explorer and Figure 1/5 score exactly the probe's hits on a cropped LLaVA view; the API verbs take
every probe option the CLI has; and the package's import graph has no circle."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_vilt import _write_world

import vb_probe
from vb_probe.batching import layout
from vb_probe.cli import main as probe_main
from vb_probe.data.features import Regions
from vb_probe.families import FamilyBase, Site, register_family
from vb_probe.families.base import Tally

ROOT = Path(__file__).resolve().parents[1]
GRID = 4  # the toy sees an image as 4 × 4 cells
PLANTED = (1, 2)  # layer, head: attends from every word to the image's brightest cell


@dataclass
class ToyCells(Regions):
    """One image as the toy sees it: ``boxes`` its 4 × 4 cells, ``features`` [16, 1] each cell's mean brightness."""

    kind = "pixels"


class PixelToy(torch.nn.Module):
    """``layers`` × ``heads`` of attention from each word to the image's cells: uniform, but the planted head, which
    puts its attention on the brightest cell."""

    def __init__(self, layers: int = 2, heads: int = 3):
        super().__init__()
        self.layers, self.heads = layers, heads
        self.scale = torch.nn.Parameter(torch.tensor(30.0), requires_grad=False)
        self.config = SimpleNamespace(model_type="toy-pixels")

    def forward(self, brightness: torch.Tensor, cell_mask: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """``brightness`` [B, R], ``cell_mask`` [B, R], ``words`` the longest caption → [L, B, words, H, R]."""
        batch, cells = brightness.shape
        words = int(words)
        logits = torch.zeros(self.layers, batch, words, self.heads, cells)
        logits[PLANTED[0], :, :, PLANTED[1]] = self.scale * brightness[:, None, :]
        logits = logits.masked_fill(~cell_mask.bool()[None, :, None, None, :], float("-inf"))
        return logits.softmax(-1)


class CornerTally(Tally):
    """The toy's own measure: how often any head's pick on an entity query is the image's top-left cell."""

    key = "corner_picks"

    def __init__(self, picks: int = 0, corner: int = 0):
        self.picks, self.corner = picks, corner

    def empty(self) -> CornerTally:
        return CornerTally()

    def add(self, batch, rows, mass, choice, hits) -> None:
        entity = [i for i, group in enumerate(batch.groups) if group == "entity"]
        picked = choice[:, entity]
        self.picks += picked.numel()
        self.corner += int((picked == 0).sum())

    def merge(self, other: CornerTally) -> None:
        self.picks += other.picks
        self.corner += other.corner

    def state(self) -> dict:
        return {"picks": self.picks, "corner": self.corner}

    def restored(self, state: dict) -> CornerTally:
        return CornerTally(state["picks"], state["corner"])

    def report(self, counts, select, split, select_on) -> dict:
        return {"share": round(self.corner / max(self.picks, 1), 6), "picks": self.picks}

    @staticmethod
    def lines(block: dict) -> list[str]:
        return [f"toy corner picks: {block['share']:.3f} of {block['picks']}"]


@register_family
class PixelToyFamily(FamilyBase):
    """A family that reads pixels through cells of its own, scored by the pointing rule, with its own tally."""

    name = model_type = "toy-pixels"
    rule, reads, token_kind = "pointing", "pixels", "cells"

    def load(self, source, *, dtype=None, device_map=None):
        from vb_probe.families import pin

        if isinstance(source, PixelToy):
            return pin(source)
        config = json.loads((Path(source) / "config.json").read_text())
        return pin(PixelToy(config["layers"], config["heads"]), checkpoint_path=Path(source), load_notes=[])

    def tokenizer_of(self, model):
        return SimpleNamespace(name="no tokenizer: one token a word")

    def sites(self, model):
        return [Site("self", model.layers, model.heads)]

    def prepare(self, model, store, options):
        assert store.kind == "pixels"
        return {}

    def text_limit(self, model):
        return 512

    def image_tokens(self, model, store, image_id):
        image = np.asarray(store.image(image_id), dtype=np.float32).mean(-1)  # [H, W]
        height, width = image.shape
        ys, xs = np.linspace(0, height, GRID + 1).astype(int), np.linspace(0, width, GRID + 1).astype(int)
        boxes, brightness = [], []
        for r in range(GRID):
            for c in range(GRID):
                boxes.append([xs[c], ys[r], xs[c + 1], ys[r + 1]])
                brightness.append(image[ys[r]:ys[r + 1], xs[c]:xs[c + 1]].mean() / 255.0)
        return ToyCells(image_id, np.array(boxes, np.float32), np.array(brightness, np.float32)[:, None], None,
                        float(width), float(height))

    def collate(self, model, items, tokenizer, facts, max_text_len, store=None):
        from vb_probe.families import items_image_tokens

        cells = items_image_tokens(self, model, items, store, ToyCells)
        brightness = torch.from_numpy(np.stack([c.features[:, 0] for c in cells]))
        words = max(len(item.words) for item in items)
        return layout(items, [list(range(len(item.words))) for item in items], [c.boxes for c in cells],
                      [None] * len(cells), {"brightness": brightness, "cell_mask": torch.ones_like(brightness),
                                            "words": torch.tensor(words)})

    def rows(self, model, batch, site, mask="posthoc", precision="fp32"):
        pattern = model(**batch.inputs)  # [L, B, T, H, R]
        return pattern[:, batch.batch_index, batch.query_index].float()

    def twin(self, model, seed):
        return self.load(PixelToy(model.layers, model.heads))

    def tally(self, model, options, pass_name):
        return CornerTally()

    def summary_lines(self, result):
        return CornerTally.lines(result.extras["corner_picks"])


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("seams")
    world = _write_world(root)
    folder = root / "toy"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toy-pixels", "layers": 2, "heads": 3}))
    (folder / "model.safetensors").write_bytes(b"")  # the toy keeps no weights; a checkpoint folder has a file
    return {**world, "ckpt": folder}


def test_a_pixel_family_with_a_tally_of_its_own_runs_through_the_api(toy_world):
    result = vb_probe.entity_grounding(PixelToy(), None, toy_world["flickr"], toy_world["images"])
    assert result.provenance["family"] == "toy-pixels" and result.rule == "pointing"
    assert result.best_head().label == "L1H2" and result.best_head().accuracy == 1.0  # the brightest cell: the box
    assert result.accuracy[0, 0] < 1.0  # a uniform head picks the first cell
    block = result.extras["corner_picks"]
    # 12 phrases × 6 heads, and every head but the planted one picks cell 0 (ties: the lowest): 5 of 6 picks
    assert block == {"share": round(5 / 6, 6), "picks": 72}


def test_a_pixel_family_with_a_tally_of_its_own_runs_through_the_cli_and_the_explorer(toy_world, tmp_path, capsys):
    common = ["--ckpt", str(toy_world["ckpt"]), "--flickr30k", str(toy_world["flickr"]), "--images",
              str(toy_world["images"]), "--quiet"]
    assert probe_main(["entity-grounding", *common, "--out", str(tmp_path / "eg")]) == 0
    printed = capsys.readouterr().out
    assert "toy corner picks: 0.833 of 72" in printed
    run = json.loads((tmp_path / "eg" / "run.json").read_text())
    assert run["corner_picks"] == {"share": 0.833333, "picks": 72} and run["extras"] == ["corner_picks"]
    loaded = vb_probe.GroundingResult.load(tmp_path / "eg")
    assert loaded.extras == {"corner_picks": {"share": 0.833333, "picks": 72}}
    assert probe_main(["explore", *common, "--scores", str(tmp_path / "eg"), "--out", str(tmp_path / "page")]) == 0
    from vb_probe.explorer import explorer_data

    data = explorer_data(PixelToyFamily().load(PixelToy()), None, vb_probe.Flickr30kEntities(toy_world["flickr"]),
                         __import__("vb_probe.data.images", fromlist=["ImageFolder"]).ImageFolder(toy_world["images"]),
                         limit=2, scores=loaded)
    query = data["captions"][0]["queries"][str(data["captions"][0]["phrases"][0]["query"])]
    picked = query["argmax"][PLANTED[0]][PLANTED[1]]
    assert picked in query["hits"]["entity"]  # the planted head's pick is a hit on the page too
    assert (tmp_path / "page" / "index.html").stat().st_size > 1000


# ------------------------------------------------------------------------------------------- the query word

def _refcoco_from_world(root: Path, world: dict) -> Path:
    """A RefCOCO layout of the toy world's images: one expression an image, "the man on the left" (head: man, last
    word: left), its gold box the image's bright box."""
    from vb_probe.data.flickr30k import Flickr30kEntities
    from vb_probe.data.refcoco import write_refcoco

    flickr = Flickr30kEntities(world["flickr"])
    images, objects, refs = [], [], []
    for number, image_id in enumerate(world["ids"]):
        annotation = flickr.annotation(image_id)
        images.append({"id": int(image_id), "width": annotation.width, "height": annotation.height,
                       "file_name": f"{image_id}.png"})
        objects.append({"id": 100 + number, "image_id": int(image_id), "box": annotation.boxes[1][0].tolist()})
        refs.append({"ref_id": number, "ann_id": 100 + number, "image_id": int(image_id),
                     "split": "testA" if number % 2 else "val",
                     "sentences": [("the", "man", "on", "the", "left")]})
    write_refcoco(root, images, objects, refs)
    return root


def test_a_sets_own_query_word_reaches_run_json_and_changes_the_picks(toy_world, tmp_path, monkeypatch):
    """RefCOCO's default query word is the head ("man" in "the man on the left"), Flickr30K's the last word; without
    --query-word each set takes its own, run.json says which, and a head that grounds from "man" only is right on
    every expression with the default and never with --query-word last."""
    refcoco = _refcoco_from_world(tmp_path / "refcoco", toy_world)
    man_only = {"on": False}

    def rows(self, model, batch, site, mask="posthoc", precision="fp32"):
        pattern = model(**batch.inputs)  # [L, B, T, H, R]
        picked = pattern[:, batch.batch_index, batch.query_index].float()
        words = [batch_words[b][q] for b, q in zip(batch.batch_index.tolist(), batch.query_index.tolist())]
        uniform = torch.full_like(picked[0, 0, 0], 1.0 / picked.shape[-1])
        for n, word in enumerate(words):
            if word != "man":  # only "man" finds the box
                picked[PLANTED[0], n, PLANTED[1]] = uniform
        man_only["on"] = True
        return picked

    batch_words: dict[int, list[str]] = {}
    real_collate = PixelToyFamily.collate

    def collate(self, model, items, tokenizer, facts, max_text_len, store=None):
        batch_words.clear()
        batch_words.update({b: list(item.words) for b, item in enumerate(items)})
        return real_collate(self, model, items, tokenizer, facts, max_text_len, store)

    monkeypatch.setattr(PixelToyFamily, "rows", rows)
    monkeypatch.setattr(PixelToyFamily, "collate", collate)
    out_default, out_last = tmp_path / "default", tmp_path / "last"
    common = ["entity-grounding", "--ckpt", str(toy_world["ckpt"]), "--refcoco", str(refcoco), "--images",
              str(toy_world["images"]), "--split", "testA", "--quiet"]
    assert probe_main([*common, "--out", str(out_default)]) == 0  # no --query-word: the set's own
    assert probe_main([*common, "--query-word", "last", "--out", str(out_last)]) == 0
    default, last = (json.loads((out / "run.json").read_text()) for out in (out_default, out_last))
    assert man_only["on"]
    assert (default["dataset"], default["query_word"]) == ("refcoco", "head")
    assert default["protocol"]["query_token"].startswith("last sub-word of the phrase's head word")
    assert (last["dataset"], last["query_word"]) == ("refcoco", "last")
    planted = f"L{PLANTED[0]}H{PLANTED[1]}"
    assert default["best_head"] == {"layer": PLANTED[0], "head": PLANTED[1], "accuracy": 1.0}, planted
    assert last["per_layer_best"][PLANTED[0]]["accuracy"] < 1.0
    flickr = vb_probe.entity_grounding(PixelToy(), None, toy_world["flickr"], toy_world["images"])
    assert (flickr.provenance["dataset"], flickr.provenance["query_word"]) == ("flickr30k", "last")


# ------------------------------------------------------------------------------------------- one place for hits

def test_the_explorer_and_figure_1_score_the_probes_hits_on_a_cropped_llava_view(tmp_path):
    """A wide image seen through LLaVA's centre crop: a phrase boxed in the cropped-away band is skipped by the probe
    (outside_view), so by the explorer and Figure 1/5 too (never drawn as a miss), and the other phrase's hits are
    the probe's own."""
    from decoder_fixtures import tiny_llava
    from PIL import Image

    from vb_probe.data.flickr30k import Annotation, Phrase, format_annotation, format_sentence
    from vb_probe.data.images import ImageFolder
    from vb_probe.explorer import explorer_data
    from vb_probe.families.decoder import DecoderFamily
    from vb_probe.visualize import figure_queries

    flickr, images = tmp_path / "flickr", tmp_path / "images"
    for sub in (flickr / "Sentences", flickr / "Annotations", images):
        sub.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 300, 3)).astype(np.uint8)).save(images / "1.png")
    boxes = {1: np.array([[2, 10, 40, 90]], np.float32), 2: np.array([[120, 20, 180, 80]], np.float32)}
    (flickr / "Annotations" / "1.xml").write_text(format_annotation(Annotation("1", 300, 100, boxes=boxes)))
    (flickr / "Sentences" / "1.txt").write_text(format_sentence(
        ["a", "dog", "and", "a", "cat"], [Phrase(0, ("a", "dog"), 1, ("animals",)),
                                          Phrase(3, ("a", "cat"), 2, ("animals",))]) + "\n")
    for split in ("train", "val", "test"):
        (flickr / f"{split}.txt").write_text("1\n")
    model = DecoderFamily().load(tiny_llava())
    result = vb_probe.entity_grounding(model, None, flickr, images)
    assert result.skipped == {"outside_view": 1} and result.n == 1  # the dog's box lies in the cropped-away band
    dataset, store = vb_probe.Flickr30kEntities(flickr), ImageFolder(images)
    data = explorer_data(model, None, dataset, store, scores=result)
    page_phrases = data["captions"][0]["phrases"]
    assert [p["entity"] for p in page_phrases] == [2] and data["skipped"]["phrases_outside_view"] == 1
    cells = DecoderFamily().image_tokens(model, store, "1")
    from vb_probe.metrics.boxes import query_targets

    probe_hits = np.flatnonzero(query_targets(cells.boxes, boxes[2], cells.seen)["pointing"]).tolist()
    query = data["captions"][0]["queries"][str(page_phrases[0]["query"])]
    assert query["hits"]["entity"] == probe_hits and probe_hits  # the page's hits are the probe's
    figure = figure_queries(model, dataset, store, "1", 0)
    assert set(figure) == {2} and np.flatnonzero(figure[2]).tolist() == probe_hits  # so are Figure 1/5's


# ------------------------------------------------------------------------------------------- one door

def test_the_api_verbs_take_every_probe_option_the_cli_has():
    """Every option of `vb-probe entity-grounding` and `syntactic` is a keyword of the API verb (or the verb's own
    argument: the checkpoint, the set, the tokenizer), checked against the probe's configuration in one place."""
    import inspect

    from vb_probe.api import PROBE_OPTIONS, _probe, syntactic_grounding
    from vb_probe.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    own = {"ckpt", "tokenizer", "flickr30k", "refcoco", "visual_genome", "dataset", "out", "quiet", "debug", "help",
           "relation"}
    taken = PROBE_OPTIONS | set(inspect.signature(_probe).parameters) | \
        set(inspect.signature(syntactic_grounding).parameters) | {"parses"}
    for command in ("entity-grounding", "syntactic"):
        dests = {action.dest for action in commands[command]._actions}
        assert dests - own - taken == set(), command
    with pytest.raises(vb_probe.VbProbeError, match="unknown probe option quary_word"):
        vb_probe.entity_grounding(PixelToy(), None, ROOT, None, quary_word="head")


# ------------------------------------------------------------------------------------------- no circles

def import_graph(package: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports, every import statement counted (those inside functions too)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        base_package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = base_package.split(".")[: len(base_package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target and target != module:
                    graph[module].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circle():
    assert circles(import_graph(ROOT / "vb_probe")) == []
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]  # the check can fail
