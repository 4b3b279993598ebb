"""ViLT as a family: transformers' own ViltModel, tiny and random, saved as a folder. Geometry against ViLT's image
processor, the rows against the model's own output_attentions (in the order the model itself drew), a planted
head found at 1.000 by the pointing rule, the permuted-geometry control, and the CLI, the API and the explorer."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from fixtures import lay_out_hub_cache, write_vocab
from PIL import Image

import vb_probe
from vb_probe.cli import main as probe_main
from vb_probe.data.flickr30k import Annotation, Phrase, format_annotation, format_sentence
from vb_probe.data.images import ImageFolder
from vb_probe.families import family_of
from vb_probe.families.vilt import captured_patch_order, cell_rows, forward_with_patch_order, patch_grid
from vb_probe.queries import collect_items

PATCH = 32
SIZES = [(400, 300), (300, 400), (480, 240), (400, 300), (360, 360), (420, 280)]  # width, height


def _processor(shortest: int = 128):
    from transformers import ViltImageProcessorPil

    return ViltImageProcessorPil(size={"shortest_edge": shortest}, size_divisor=PATCH)


def _tiny_vilt(folder: Path) -> Path:
    """A tiny random ViltModel with its tokenizer and a small image processor (shortest edge 128), saved."""
    from transformers import BertTokenizerFast, ViltConfig, ViltModel

    vocab = folder.parent / (folder.name + "_vocab")
    size = write_vocab(vocab)
    torch.manual_seed(0)
    config = ViltConfig(vocab_size=size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, image_size=128, patch_size=PATCH, max_position_embeddings=40)
    model = ViltModel(config)
    with torch.no_grad():  # sharpen attention so that heads differ clearly
        for layer in model.encoder.layer:
            layer.attention.attention.query.weight.mul_(8.0)
    model.save_pretrained(folder)
    BertTokenizerFast.from_pretrained(str(vocab)).save_pretrained(str(folder))
    _processor().save_pretrained(str(folder))
    return folder


def _write_world(root: Path) -> dict:
    """Six images of several aspect ratios, noise with one brighter box (entity 1, "a man"), in the Flickr30K
    Entities layout, two captions each; and the images as PNG."""
    flickr, images = root / "flickr", root / "images"
    for sub in (flickr / "Sentences", flickr / "Annotations", images):
        sub.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for i, (w, h) in enumerate(SIZES):
        image_id = str(700 + i)
        ids.append(image_id)
        bw, bh = w * rng.uniform(0.45, 0.6), h * rng.uniform(0.45, 0.6)
        x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        box = np.array([[x1, y1, x1 + bw, y1 + bh]], np.float32).round()
        pixels = rng.integers(0, 160, (h, w, 3))  # noise, and the box brighter on average
        x1, y1, x2, y2 = (int(v) for v in box[0])
        pixels[y1:y2, x1:x2] += 90
        Image.fromarray(pixels.astype(np.uint8)).save(images / f"{image_id}.png")
        annotation = Annotation(image_id, w, h, boxes={1: box}, scene=set(), nobox=set())
        (flickr / "Annotations" / f"{image_id}.xml").write_text(format_annotation(annotation))
        captions = [(["a", "man", "throws", "a", "ball", "."], [Phrase(0, ("a", "man"), 1, ("people",))]),
                    (["the", "big", "man", "is", "near", "the", "park", "."],
                     [Phrase(0, ("the", "big", "man"), 1, ("people",))])]
        (flickr / "Sentences" / f"{image_id}.txt").write_text(
            "\n".join(format_sentence(words, phrases) for words, phrases in captions) + "\n")
    for split in ("train", "val", "test"):
        (flickr / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return {"flickr": flickr, "images": images, "ids": ids}


@pytest.fixture(scope="module")
def vilt(tmp_path_factory):
    root = tmp_path_factory.mktemp("vilt")
    return {**_write_world(root), "vilt": _tiny_vilt(root / "vilt")}


# ------------------------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("size, grid", [((500, 375), (12, 16)), ((375, 500), (16, 12)), ((640, 300), (9, 19))])
def test_cells_are_the_processors_patches_for_three_aspect_ratios(size, grid):
    """ViLT's default processor (shortest edge 384, longest ≤ 640, multiples of 32): 500 × 375 becomes 512 × 384,
    12 × 16 patches (the issue's example), x and y scaled apart. A block painted in the original image inside one
    cell's box lands, after the processor, inside that cell's patch and no other."""
    from transformers import ViltImageProcessorPil

    processor = ViltImageProcessorPil()
    width, height = size
    blank = Image.new("RGB", size, (0, 0, 0))
    grid_of = patch_grid(processor, PATCH, blank, "x")
    assert grid_of.grid == grid and len(grid_of.boxes) == grid[0] * grid[1]
    resized_h, resized_w = processor(blank, return_tensors="pt")["pixel_values"].shape[2:]
    np.testing.assert_allclose(grid_of.boxes[0], [0, 0, PATCH * width / resized_w, PATCH * height / resized_h],
                               rtol=1e-5)
    np.testing.assert_allclose(grid_of.boxes[-1, 2:], [width, height], rtol=1e-5)
    area = ((grid_of.boxes[:, 2] - grid_of.boxes[:, 0]) * (grid_of.boxes[:, 3] - grid_of.boxes[:, 1])).sum()
    assert area == pytest.approx(width * height, rel=1e-4)  # the cells tile the image
    for cell in (0, grid[1] + 3, len(grid_of.boxes) - 1):
        x1, y1, x2, y2 = grid_of.boxes[cell]
        painted = blank.copy()
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        painted.paste((255, 255, 255), (int(cx - 3), int(cy - 3), int(cx + 3), int(cy + 3)))
        pixels = processor(painted, return_tensors="pt")["pixel_values"][0].mean(0)  # [H, W]
        lit = (pixels > -0.5).nonzero()
        patches = {(int(r) // PATCH, int(c) // PATCH) for r, c in lit}
        assert patches == {divmod(cell, grid[1])}, (cell, patches)


def test_the_patch_order_is_drawn_anew_each_forward_and_captured(vilt):
    """Two forwards draw two patch orders; put back into cell order with the captured order, the rows are the
    same, and equal each caption's own output_attentions in row-major order (torch.multinomial made the
    identity, so no capture is needed for the reference)."""
    model = vb_probe.load_model(vilt["vilt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    family = family_of(model)
    assert family.name == "vilt" and family.rule == "pointing"
    flickr, images = vb_probe.Flickr30kEntities(vilt["flickr"]), ImageFolder(vilt["images"])
    items, _ = collect_items(flickr, images, flickr.split("test"))
    batch = family.collate(model, items, tokenizer, family.prepare(model, images, {}), 40, images)
    assert len({tuple(g) for g in batch.extras["grids"].tolist()}) > 1  # several grids: padding is exercised
    with torch.no_grad():
        first, order1 = forward_with_patch_order(model, batch.inputs, seed=1)
        second, order2 = forward_with_patch_order(model, batch.inputs, seed=2)
    assert not torch.equal(order1["patch_index"], order2["patch_index"])  # the model shuffles on every forward
    rows = cell_rows(first, order1, batch)
    torch.testing.assert_close(cell_rows(second, order2, batch), rows, rtol=0, atol=1e-6)
    naive = cell_rows(first, {**order1, "patch_index": order2["patch_index"]}, batch)  # the wrong order
    assert not torch.allclose(naive, rows, atol=1e-3)

    def identity(weights, n, replacement=False, **kwargs):
        return torch.arange(n) if not replacement else torch.zeros(n, dtype=torch.long)

    with torch.no_grad(), mock.patch("torch.multinomial", side_effect=identity):
        for q, (b, position) in enumerate(zip(batch.batch_index.tolist(), batch.query_index.tolist())):
            item = items[b]
            grid = family.image_tokens(model, images, item.image_id)
            ids = tokenizer(list(item.words), is_split_into_words=True, return_tensors="pt")
            own = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                        pixel_values=grid.pixel_values[None], pixel_mask=grid.pixel_mask[None], output_attentions=True)
            text_len = ids["input_ids"].shape[1]
            expected = torch.stack(own.attentions)[:, 0, :, position, text_len + 1:]  # [layer, head, cells]
            torch.testing.assert_close(rows[:, q, :, :len(grid)], expected, rtol=0, atol=1e-6)
            assert float(rows[:, q, :, len(grid):].abs().sum()) == 0.0  # other images' extra cells get nothing


def test_capturing_the_order_leaves_the_outputs_unchanged(vilt):
    model = vb_probe.load_model(vilt["vilt"])
    images = ImageFolder(vilt["images"])
    grid = family_of(model).image_tokens(model, images, vilt["ids"][0])
    inputs = {"input_ids": torch.tensor([[2, 5, 6, 3]]), "pixel_values": grid.pixel_values[None],
              "pixel_mask": grid.pixel_mask[None]}
    with torch.no_grad():
        torch.manual_seed(3)
        plain = model(**inputs).last_hidden_state
        with captured_patch_order(model) as order:
            torch.manual_seed(3)
            captured = model(**inputs).last_hidden_state
    assert torch.equal(plain, captured) and order["patch_index"].shape == (1, len(grid), 2)
    assert "visual_embed" not in model.embeddings.__dict__  # the wrapper is gone


# ------------------------------------------------------------------------------------------- scoring

def _plant(model, layer: int = 1, head: int = 2) -> None:
    """A registered attention pattern: head ``head`` of ``layer`` attends to the brightest patches (the gold box),
    whatever order the model drew them in. Channel 0 of the patch embedding is made the patch's mean
    brightness; the planted head reads it from the embedding output, in the sequence's own order."""
    embeddings = model.embeddings
    with torch.no_grad():
        weight = embeddings.patch_embeddings.projection.weight  # [hidden, 3, patch, patch]
        weight[1:] -= weight[1:].mean(dim=(1, 2, 3), keepdim=True)  # the other channels blind to a uniform shift
        weight[0] = 1.0 / (3 * PATCH * PATCH)
        embeddings.patch_embeddings.projection.bias[0] = 0.0
        embeddings.position_embeddings[..., 0] = 0.0
        embeddings.token_type_embeddings.weight[:, 0] = 0.0
    stash = {}
    model.encoder.layer[0].register_forward_pre_hook(lambda module, args: stash.update(embedded=args[0]))
    embeddings.text_embeddings.register_forward_hook(lambda module, args, out: stash.update(text_len=out.shape[1]))
    attention = model.encoder.layer[layer].attention.attention
    original = attention.forward

    def planted(hidden_states, attention_mask=None, output_attentions=False):
        context, probs = original(hidden_states, attention_mask, output_attentions=True)
        brightness = stash["embedded"][..., 0].clone()  # [B, S]
        brightness[:, :stash["text_len"]] = -1e4  # the pattern lives on the image tokens
        probs = probs.clone()
        probs[:, head] = torch.softmax(200.0 * brightness, dim=-1)[:, None, :].expand_as(probs[:, head])
        return (context, probs) if output_attentions else (context,)

    attention.forward = planted


def test_a_planted_head_is_found_at_one_and_the_controls_see_through_it(vilt, tmp_path):
    model = vb_probe.load_model(vilt["vilt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    _plant(model)
    result = vb_probe.entity_grounding(model, tokenizer, vilt["flickr"], vilt["images"], batch_size=5)
    assert result.rule == "pointing" and result.n == 12 and result.n_phrases == 12
    assert result.accuracy[1, 2] == 1.0 and result.best_head().label == "L1H2"
    others = np.delete(result.accuracy.ravel(), 1 * 4 + 2)
    random = result.baselines["random"]
    assert 0.15 < random < 0.45 and result.baselines["highest_confidence"] is None  # the box's share of the image
    assert others.max() < 1.0 and abs(others.mean() - random) < 0.2
    permuted = result.permuted.accuracy  # the same picks against shuffled cells: the planted head loses its edge
    assert permuted[1, 2] < 0.75
    assert result.other_rule is not None and result.other_rule_name == "iou"
    assert result.other_rule.accuracy.max() < 1.0  # a patch is rarely IoU ≥ 0.5 with a box
    saved = result.save(tmp_path / "eg")
    assert vb_probe.GroundingResult.load(saved) == result


def test_vilt_through_the_cli_the_api_and_the_explorer(vilt, tmp_path, capsys):
    common = ["--ckpt", str(vilt["vilt"]), "--flickr30k", str(vilt["flickr"]), "--images", str(vilt["images"]),
              "--quiet"]
    assert probe_main(["entity-grounding", *common, "--control", "--select-on", "val", "--out",
                       str(tmp_path / "eg")]) == 0
    printed = capsys.readouterr().out
    assert "permuted geometry" in printed and "iou rule" in printed
    run = json.loads((tmp_path / "eg" / "run.json").read_text())
    assert run["family"] == "vilt" and run["rule"] == "pointing" and len(run["per_layer_best"]) == 2
    assert run["image_processor"]["size"] == {"shortest_edge": 128}
    assert run["n_phrases"] == run["n_scored"] + sum(run["skipped"].values())
    again = vb_probe.entity_grounding(vb_probe.load_model(vilt["vilt"]), vb_probe.load_tokenizer(vilt["vilt"]),
                                      vilt["flickr"], vilt["images"])
    np.testing.assert_array_equal(again.n_correct, vb_probe.GroundingResult.load(tmp_path / "eg").n_correct)
    parses = tmp_path / "parses.conllu"
    from vb_probe.data.parses import Parse, to_conllu

    parses.write_text(to_conllu([Parse(f"{i}_0", ("a", "man", "throws", "a", "ball", "."), (2, 3, 0, 5, 3, 3),
                                       ("det", "nsubj", "ROOT", "det", "dobj", "punct")) for i in vilt["ids"]]
                                + [Parse(f"{i}_1", ("the", "big", "man", "is", "near", "the", "park", "."),
                                         (3, 3, 4, 0, 4, 7, 5, 4),
                                         ("det", "amod", "nsubj", "ROOT", "prep", "det", "pobj", "punct"))
                                   for i in vilt["ids"]]))
    assert probe_main(["syntactic", *common, "--parses", str(parses), "--relation", "nsubj", "--out",
                       str(tmp_path / "syn")]) == 0
    syn = json.loads((tmp_path / "syn" / "run.json").read_text())
    assert syn["rule"] == "pointing"
    assert probe_main(["explore", *common, "--scores", str(tmp_path / "eg"), "--out", str(tmp_path / "page")]) == 0
    page = (tmp_path / "page" / "index.html").read_text()
    assert '"rule":"pointing"' in page.replace(" ", "") and "data:image/jpeg;base64" in page
    assert probe_main(["visualize", *common, "--image-id", vilt["ids"][0], "--scores", str(tmp_path / "eg"),
                       "--out", str(tmp_path / "fig1.png")]) == 0
    assert probe_main(["figures", "--results", str(tmp_path / "eg"), "--out", str(tmp_path / "figures")]) == 0
    assert sorted(p.name[:4] for p in (tmp_path / "figures").glob("fig*.png")) == ["fig1", "fig3", "fig5"]
    assert probe_main(["entity-grounding", *common[:4], "--out", str(tmp_path / "none"), "--quiet"]) == 2
    assert "--images" in capsys.readouterr().err


def test_a_vilt_hub_id_resolves_from_a_laid_out_cache(vilt, tmp_path, monkeypatch):
    folder = vilt["vilt"]
    lay_out_hub_cache(tmp_path, "dandelin/vilt-b32-mlm", {name: folder / name for name in (
        "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json")})
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = vb_probe.load_model("dandelin/vilt-b32-mlm")
    assert family_of(model).name == "vilt" and model.image_processor.size == {"shortest_edge": 128}
    result = vb_probe.entity_grounding(model, vb_probe.load_tokenizer(model=model), vilt["flickr"], vilt["images"])
    reference = vb_probe.entity_grounding(vb_probe.load_model(folder), vb_probe.load_tokenizer(folder),
                                          vilt["flickr"], vilt["images"])
    np.testing.assert_array_equal(result.n_correct, reference.n_correct)


# ------------------------------------------------------------------------------------------- the demo and training

def test_the_vilt_demo_runs_end_to_end_and_its_checkpoint_is_a_vilt(tmp_path, capsys):
    """`vb-probe demo --family vilt` at toy size: the world, a ViLT pre-trained through the trainer loop (saved as
    transformers' ViltForMaskedLM with its image processor), the probes by the pointing rule, the explorer, the
    report; resuming the pre-training continues the same run."""
    tiny = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=4",
            "model.intermediate_size=64", "train.steps=4", "train.batch_size=8", "train.eval_every=2",
            "train.save_every=2", "train.eval_batches=1", "model.image_size=96"]
    out = tmp_path / "demo"
    args = ["demo", "--family", "vilt", "--out", str(out), "--scenes", "30", "--quiet"]
    assert probe_main(["--debug", *args, *sum((["--set", s] for s in tiny), [])]) == 0
    report = (out / "report.md").read_text()
    assert "pointing rule" in report and "permuted geometry" in report and "random-initialised ViLT" in report
    run = json.loads((out / "entity_grounding" / "run.json").read_text())
    assert run["family"] == "vilt" and run["rule"] == "pointing" and len(run["per_layer_best"]) == 2
    assert run["n_phrases"] == run["n_scored"] + sum(run["skipped"].values())
    assert (out / "explorer" / "index.html").is_file() and (out / "syntactic" / "syntactic.csv").is_file()
    final = next((out / "models").iterdir()) / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "vilt" and config["architectures"] == ["ViltForMaskedLM"]
    from transformers import ViltForMaskedLM

    ViltForMaskedLM.from_pretrained(str(final))  # transformers' own class loads it as it is
    model = vb_probe.load_model(final)
    assert model.image_processor.size == {"shortest_edge": 96} and model.config.patch_size == 32
    with open(final.parent / "log.csv") as handle:
        assert [row.split(",")[0] for row in handle.read().splitlines()[1:]] == ["1", "2", "3", "4"]
    capsys.readouterr()
    assert probe_main([*args, *sum((["--set", s] for s in tiny), [])]) == 0  # everything reused
    assert "model: reusing" in capsys.readouterr().out


def test_bad_images_get_one_line_naming_the_file(vilt, tmp_path, capsys):
    """A missing image is an error naming it (or, with --skip-missing-features, its phrases are counted as skipped);
    a file that is not an image names the file; an --images that is not a folder says so; a region model given
    only --images asks for --features."""
    import shutil

    images = tmp_path / "images"
    shutil.copytree(vilt["images"], images)
    (images / f"{vilt['ids'][1]}.png").unlink()
    common = ["entity-grounding", "--ckpt", str(vilt["vilt"]), "--flickr30k", str(vilt["flickr"]), "--quiet"]
    assert probe_main([*common, "--images", str(images), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"no image {vilt['ids'][1]}" in err and "--skip-missing-features" in err
    assert probe_main([*common, "--images", str(images), "--skip-missing-features", "--out", str(tmp_path / "b")]) == 0
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["skipped"] == {"missing_features": 2} and run["n_scored"] + 2 == run["n_phrases"] == 12
    (images / f"{vilt['ids'][2]}.png").write_bytes(b"not a picture")
    capsys.readouterr()
    assert probe_main([*common, "--images", str(images), "--skip-missing-features", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{vilt['ids'][2]}.png: not a readable image" in err
    assert probe_main([*common, "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")]) == 2
    assert "not a folder" in capsys.readouterr().err
