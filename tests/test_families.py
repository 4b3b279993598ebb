"""The family seam: a toy family defined here, in the test module — a planted attention pattern over a handful of
image tokens with boxes — runs through ``entity_grounding``, the CLI and the explorer with no edit to the engine,
and its planted head is found at accuracy 1.000 while the others sit near the baseline. Also: the typed results
load without the engine (or transformers), and no module outside ``vb_probe/families`` names VisualBERT's classes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures import OBJECTS, SUBJECTS, write_dataset, write_vocab

from vb_probe.batching import layout, read_regions
from vb_probe.cli import main as probe_main
from vb_probe.families import FamilyBase, Site, known_families, register_family

PLANTED = (1, 2)  # layer, head
# the word classes the planted head looks for: its query word's class picks the feature dimension it attends to
WORD_CLASS = {**{w: 0 for w in SUBJECTS}, **{w: 1 for w in OBJECTS}, **{w + "s": 1 for w in OBJECTS}}


class PlantedModel(torch.nn.Module):
    """``layers`` × ``heads`` of attention from each word to the image tokens. Every head attends uniformly, but
    the planted one: from a word of class c it attends to the tokens whose feature c is large."""

    def __init__(self, layers: int = 3, heads: int = 4, planted: tuple[int, int] | None = PLANTED):
        super().__init__()
        self.layers, self.heads = layers, heads
        self.planted = torch.nn.Parameter(torch.tensor(planted if planted else (-1, -1)), requires_grad=False)
        self.config = SimpleNamespace(model_type="toy-planted")
        self.checkpoint_path, self.load_notes = None, []

    def forward(self, features: torch.Tensor, token_mask: torch.Tensor, word_class: torch.Tensor) -> torch.Tensor:
        """``features`` [B, R, 2], ``token_mask`` [B, R], ``word_class`` [B, T] (-1: none) → [L, B, T, H, R]."""
        batch, tokens = token_mask.shape
        logits = torch.zeros(self.layers, batch, word_class.shape[1], self.heads, tokens)
        layer, head = (int(v) for v in self.planted)
        if layer >= 0:
            picked = features[:, None, :, :].expand(-1, word_class.shape[1], -1, -1)  # [B, T, R, 2]
            index = word_class.clamp(min=0)[:, :, None, None].expand(-1, -1, tokens, 1)
            score = picked.gather(-1, index).squeeze(-1) * (word_class[:, :, None] >= 0)  # [B, T, R]
            logits[layer, :, :, head] = 20.0 * score
        logits = logits.masked_fill(~token_mask.bool()[None, :, None, None, :], float("-inf"))
        return logits.softmax(-1)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "toy-planted", "layers": self.layers,
                                                        "heads": self.heads}))
        save_file({"planted": self.planted.detach().clone()}, str(folder / "model.safetensors"))


@register_family
class PlantedFamily(FamilyBase):
    """The toy family: image tokens are the feature file's regions (boxes in pixels), one token per word."""

    name = "toy-planted"
    model_type = "toy-planted"
    default_tokenizer = None

    def recognise(self, source) -> bool:
        return (source.get("model_type") == self.model_type) if isinstance(source, dict) else \
            isinstance(source, PlantedModel)

    def load(self, source, *, dtype=None, device_map=None):
        if isinstance(source, PlantedModel):
            return source
        from safetensors.torch import load_file

        config = json.loads((Path(source) / "config.json").read_text())
        model = PlantedModel(config["layers"], config["heads"],
                             tuple(load_file(str(Path(source) / "model.safetensors"))["planted"].tolist()))
        model.checkpoint_path = Path(source)
        return model

    def sites(self, model) -> list[Site]:
        return [Site("self", model.layers, model.heads)]

    def prepare(self, model, features, options: dict) -> dict:
        return {"word_classes": 2}

    def text_limit(self, model) -> int:
        return 512

    def collate(self, model, items, tokenizer, facts, max_text_len, features=None):
        regions = read_regions(items, features)
        r_max, t_max = max(len(r) for r in regions), max(len(i.words) for i in items)
        feats, mask = torch.zeros(len(items), r_max, 2), torch.zeros(len(items), r_max)
        classes = torch.full((len(items), t_max), -1, dtype=torch.long)
        for b, (item, r) in enumerate(zip(items, regions)):
            feats[b, :len(r)] = torch.from_numpy(np.asarray(r.features, np.float32))
            mask[b, :len(r)] = 1
            classes[b, :len(item.words)] = torch.tensor([WORD_CLASS.get(w, -1) for w in item.words])
        return layout(items, [list(range(len(i.words))) for i in items], [r.boxes for r in regions],
                      [r.confidences for r in regions], {"features": feats, "token_mask": mask, "word_class": classes})

    def rows(self, model, batch, site, mask="posthoc", precision="fp32") -> torch.Tensor:
        pattern = model(**batch.inputs)  # [L, B, T, H, R]
        return pattern[:, batch.batch_index, batch.query_index].float().cpu()

    def twin(self, model, seed: int):
        return PlantedModel(model.layers, model.heads, planted=None)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The fixture data set with captions whose phrases end in their nouns, two-dimensional features marking the
    subject's and the object's region, and the toy checkpoint (with a tokenizer, which the toy never reads)."""
    from transformers import BertTokenizerFast

    from vb_probe.data.features import open_features, write_tsv
    from vb_probe.data.flickr30k import Flickr30kEntities
    from vb_probe.metrics.boxes import iou

    root = tmp_path_factory.mktemp("toy")
    data = write_dataset(root, n_images=12)
    flickr = Flickr30kEntities(data["flickr"])
    store = open_features(data["tsv"])
    regions = []
    test_ids = flickr.split("test")
    for i, image_id in enumerate(test_ids):
        subj, obj = SUBJECTS[i % 4], OBJECTS[i % 4]
        (data["flickr"] / "Sentences" / f"{image_id}.txt").write_text(
            f"[/EN#1/people a {subj}] throws [/EN#2/other a red {obj}] .\n"
            f"[/EN#3/other the {obj}s] are near [/EN#1/people the {subj}] .\n")
        r = store[image_id]
        boxes = flickr.annotation(image_id).boxes
        features = np.zeros((len(r), 2), np.float32)
        for column, entity in ((0, 1), (1, 2)):  # the region best overlapping the entity's gold box
            features[int(np.argmax(iou(r.boxes, boxes[entity][:1])[:, 0])), column] = 1.0
        r.features = features
        regions.append(r)
    (data["flickr"] / "test.txt").write_text("\n".join(test_ids) + "\n")
    write_tsv(root / "toy.tsv", regions)
    ckpt = root / "toy_ckpt"
    PlantedModel().save(ckpt)
    write_vocab(root / "vocab")
    BertTokenizerFast.from_pretrained(str(root / "vocab")).save_pretrained(str(ckpt))
    return {"flickr": data["flickr"], "tsv": root / "toy.tsv", "ckpt": ckpt}


def test_a_family_defined_in_a_test_module_is_registered():
    families = known_families()
    assert isinstance(families["toy-planted"], PlantedFamily) and "visualbert" in families


def test_the_planted_head_is_found_through_the_api(toy):
    import vb_probe

    model = vb_probe.load_model(toy["ckpt"])
    assert isinstance(model, PlantedModel)
    tokenizer = vb_probe.load_tokenizer(model=model)
    result = vb_probe.entity_grounding(model, tokenizer, toy["flickr"], toy["tsv"], control=True)
    best = result.best_head()
    assert (best.layer, best.head, best.accuracy) == (*PLANTED, 1.0)
    others = np.delete(result.accuracy.ravel(), PLANTED[0] * 4 + PLANTED[1])
    assert others.max() < 0.6 and abs(others.mean() - result.baselines["random"]) < 0.25
    assert result.n == result.n_phrases == 4 * len(Path(toy["flickr"] / "test.txt").read_text().split())
    assert result.control.best_head().accuracy < 0.6  # the twin has nothing planted


def test_the_planted_head_is_found_through_the_cli_and_the_explorer(toy, tmp_path, capsys):
    common = ["--ckpt", str(toy["ckpt"]), "--flickr30k", str(toy["flickr"]), "--features", str(toy["tsv"]), "--quiet"]
    assert probe_main(["entity-grounding", *common, "--out", str(tmp_path / "eg")]) == 0
    run = json.loads((tmp_path / "eg" / "run.json").read_text())
    assert run["best_head"] == {"layer": PLANTED[0], "head": PLANTED[1], "accuracy": 1.0}
    assert run["family"] == "toy-planted" and run["word_classes"] == 2
    rows = (tmp_path / "eg" / "entity_grounding.csv").read_text().splitlines()
    n = run["n_scored"]
    assert n == 28 and rows[1 + PLANTED[0] * 4 + PLANTED[1]].startswith(f"{PLANTED[0]},{PLANTED[1]},{n},{n},1.000000")
    assert probe_main(["explore", *common, "--scores", str(tmp_path / "eg"), "--out", str(tmp_path / "page")]) == 0
    html = (tmp_path / "page" / "index.html").read_text()
    data = json.loads(html.split('type="application/json">')[1].split("</script>")[0])
    assert data["accuracy"][PLANTED[0]][PLANTED[1]] == "1.000000" and data["layers"] == 3 and data["heads"] == 4
    for caption in data["captions"]:
        for entry in caption["queries"].values():  # the page marks the planted head's pick as a hit, every time
            assert entry["argmax"][PLANTED[0]][PLANTED[1]] in entry["hits"]["entity"]


def test_results_load_without_the_engine_or_transformers(toy, tmp_path):
    assert probe_main(["entity-grounding", "--ckpt", str(toy["ckpt"]), "--flickr30k", str(toy["flickr"]),
                       "--features", str(toy["tsv"]), "--quiet", "--out", str(tmp_path / "eg")]) == 0
    script = ("import sys, vb_probe.results as r; g = r.GroundingResult.load(sys.argv[1]); "
              "heavy = sorted(m for m in ('transformers', 'torch', 'vb_probe.pipeline', 'vb_probe.families') "
              "if m in sys.modules); print(g.best_head().label, heavy)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "eg")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == f"L{PLANTED[0]}H{PLANTED[1]} []"


def test_no_module_outside_families_names_visualberts_classes():
    root = Path(__file__).resolve().parents[1] / "vb_probe"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if "families" in path.relative_to(root).parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else \
                [node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute) else \
                [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.startswith("VisualBert") else []
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            if any(n.startswith("VisualBert") or n == "visual_bert" for n in names) or "visualbert" in module:
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, offenders


# ------------------------------------------------------------------------------------------- LXMERT

def _tiny_lxmert(folder: Path) -> Path:
    """A tiny random LXMERT (transformers' own class) saved as a folder, with the fixtures' tokenizer."""
    from transformers import BertTokenizerFast, LxmertConfig, LxmertModel

    vocab = folder.parent / (folder.name + "_vocab")
    size = write_vocab(vocab)
    torch.manual_seed(0)
    config = LxmertConfig(vocab_size=size, hidden_size=32, num_attention_heads=4, intermediate_size=64, l_layers=1,
                          x_layers=2, r_layers=1, visual_feat_dim=12, visual_pos_dim=4, max_position_embeddings=64)
    LxmertModel(config).save_pretrained(folder)
    BertTokenizerFast.from_pretrained(str(vocab)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def lxmert(tmp_path_factory):
    from fixtures import write_probe_set

    root = tmp_path_factory.mktemp("lxmert")
    data = write_probe_set(root, n_images=8)
    return {**data, "lxmert": _tiny_lxmert(root / "lxmert")}


def test_lxmert_rows_are_the_models_own_cross_attention_one_caption_at_a_time(lxmert):
    """Rows of a padded batch (captions and region counts of several lengths) equal each caption's own
    cross_encoder_attentions, forward by forward."""
    import vb_probe
    from vb_probe.data.features import open_features
    from vb_probe.data.flickr30k import Flickr30kEntities
    from vb_probe.families import family_of
    from vb_probe.families.lxmert import normalised_boxes
    from vb_probe.queries import collect_items

    model = vb_probe.load_model(lxmert["lxmert"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    family = family_of(model)
    assert family.name == "lxmert" and family.sites(model)[0].shape == (2, 4)
    flickr, features = Flickr30kEntities(lxmert["flickr"]), open_features(lxmert["tsv"])
    items, _ = collect_items(flickr, features, flickr.split("test"))
    batch = family.collate(model, items, tokenizer, family.prepare(model, features, {}), 64, features)
    assert len({len(features[i.image_id]) for i in items}) > 1  # regions of several counts: padding is exercised
    rows = family.rows(model, batch, family.sites(model)[0])  # [layer, n, head, R]
    with torch.no_grad():
        for q, (b, position) in enumerate(zip(batch.batch_index.tolist(), batch.query_index.tolist())):
            item, regions = items[b], features[items[b].image_id]
            ids = tokenizer(list(item.words), is_split_into_words=True, return_tensors="pt")
            own = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                        visual_feats=torch.from_numpy(regions.features)[None],
                        visual_pos=torch.from_numpy(normalised_boxes(regions))[None], output_attentions=True)
            expected = torch.stack(own.cross_encoder_attentions)[:, 0, :, position]  # [layer, head, R]
            torch.testing.assert_close(rows[:, q, :, :len(regions)], expected, rtol=0, atol=1e-6)
            assert float(rows[:, q, :, len(regions):].abs().sum()) == 0.0  # padding regions get nothing


def test_lxmert_through_the_cli_the_api_and_the_explorer(lxmert, tmp_path):
    from transformers import LxmertForPreTraining

    import vb_probe

    common = ["--ckpt", str(lxmert["lxmert"]), "--flickr30k", str(lxmert["flickr"]), "--features",
              str(lxmert["tsv"]), "--quiet"]
    assert probe_main(["entity-grounding", *common, "--control", "--out", str(tmp_path / "eg")]) == 0
    run = json.loads((tmp_path / "eg" / "run.json").read_text())
    assert run["family"] == "lxmert" and len(run["per_layer_best"]) == 2
    assert run["rule"] == "iou" and run["other_rule"]["rule"] == "pointing"  # the pointing rule beside IoU
    assert len(run["other_rule"]["n_correct"]) == 2 and len(run["control_permuted_geometry"]["n_correct"]) == 2
    assert run["n_phrases"] == run["n_scored"] + sum(run["skipped"].values())
    assert probe_main(["explore", *common, "--scores", str(tmp_path / "eg"), "--out", str(tmp_path / "page")]) == 0
    result = vb_probe.GroundingResult.load(tmp_path / "eg")
    wrapped = LxmertForPreTraining.from_pretrained(str(lxmert["lxmert"]))  # heads set aside, the encoder probed
    again = vb_probe.entity_grounding(wrapped, vb_probe.load_tokenizer(model=vb_probe.load_model(lxmert["lxmert"])),
                                      lxmert["flickr"], lxmert["tsv"])
    np.testing.assert_array_equal(again.n_correct, result.n_correct)


def test_an_lxmert_hub_id_resolves_from_a_laid_out_cache(lxmert, tmp_path, monkeypatch):
    from fixtures import lay_out_hub_cache

    import vb_probe

    folder = lxmert["lxmert"]
    lay_out_hub_cache(tmp_path, "unc-nlp/lxmert-base-uncased", {name: folder / name for name in (
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")})
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = vb_probe.load_model("unc-nlp/lxmert-base-uncased")
    assert model.config.model_type == "lxmert" and "resolved to" in model.load_notes[-1]
    result = vb_probe.entity_grounding(model, vb_probe.load_tokenizer(model=model), lxmert["flickr"], lxmert["tsv"])
    reference = vb_probe.entity_grounding(vb_probe.load_model(folder), vb_probe.load_tokenizer(folder),
                                          lxmert["flickr"], lxmert["tsv"])
    np.testing.assert_array_equal(result.n_correct, reference.n_correct)
