"""What a new user meets first: the packaging (a wheel carries the demo's config; Python and torch ranges, not
pins), the CLI's help, --version and --debug, and the edges of visualize, syntactic and a shared --out."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_probe_set

from vb_probe.cli import build_parser
from vb_probe.cli import main as probe_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_probe_set(tmp_path_factory.mktemp("newuser"), n_images=8)


def test_wheel_installs_without_its_dependencies_and_carries_the_demo_config(tmp_path):
    import shutil

    wheels, site, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # a copy of the sources: an in-place build would leave build/ in the checkout and could pack stale files
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "demo_out",
                                                                "__pycache__", ".pytest_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(wheels.glob("vb_probe-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import json, training.config as c; from dataclasses import asdict; "
             "print(json.dumps({'file': c.__file__, 'demo': asdict(c.load_config('demo'))}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["file"].startswith(str(site))  # the installed package, not the checkout
    from dataclasses import asdict

    from training.config import load_config

    assert seen["demo"] == json.loads(json.dumps(asdict(load_config(ROOT / "training" / "configs" / "demo.toml"))))
    assert seen["demo"] != json.loads(json.dumps(asdict(load_config(None))))  # not the built-in defaults


def test_pyproject_declares_ranges_not_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    torch = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert "==" not in torch and ">=" in torch
    assert "jupyterlab" in " ".join(project["optional-dependencies"]["notebooks"])


def test_help_shows_defaults_and_examples_and_version_works(capsys):
    with pytest.raises(SystemExit) as stop:
        probe_main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("vb-probe ")
    top = build_parser().format_help()
    assert "examples:" in top and "vb-probe entity-grounding --ckpt uclanlp/visualbert-vqa-coco-pre" in top
    with pytest.raises(SystemExit):
        probe_main(["entity-grounding", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, words in (("--split", "(default: the set's own: test; RefCOCO's val)"),
                          ("--batch-size", "(default: 32)"), ("--out", "folder for")):
        assert option in text and words in text, option
    with pytest.raises(SystemExit):
        probe_main(["causal", "--help"])
    assert "(default: 20)" in " ".join(capsys.readouterr().out.split())  # the images it uses, said
    with pytest.raises(SystemExit):
        probe_main(["demo", "--help"])
    demo_help = " ".join(capsys.readouterr().out.split())
    assert "--scenes SCENES how many scenes (images) the built-in world has" in demo_help  # a count, by its own name
    assert "--images" not in demo_help.split("--images, elsewhere")[0]


def test_visualize_without_scores_uses_the_heads_that_ground_the_caption(data, tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert probe_main(["visualize", "--ckpt", str(data["ckpt"]), "--flickr30k", str(data["flickr"]), "--features",
                       str(data["tsv"]), "--image-id", "500", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from vb_probe.visualize import heads_for_caption

    # by hand: 2 layers × 2 heads, 3 words of which words 0 and 2 are in boxed phrases
    choices = np.array([[[0, 1, 2], [1, 1, 1]], [[2, 0, 0], [1, 1, 2]]])
    hits = [np.array([True, False, False]), None, np.array([False, True, True])]
    assert [tuple(h) for h in heads_for_caption(choices, hits)] == [(0, 0, 1.0), (1, 1, 0.5)]


def test_visualize_draws_on_jpegs_and_warns_when_the_image_is_missing(data, tmp_path, capsys):
    from PIL import Image

    from vb_probe.visualize import find_image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (400, 300), (200, 30, 30)).save(images / "500.jpg")
    assert find_image(images, "500") == images / "500.jpg"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert find_image(images, "501") is None
    assert "no 501.jpg, .jpeg or .png" in str(caught[0].message)
    out = tmp_path / "fig.png"
    args = ["visualize", "--ckpt", str(data["ckpt"]), "--flickr30k", str(data["flickr"]), "--features",
            str(data["tsv"]), "--images", str(images), "--out", str(out)]
    assert probe_main([*args, "--image-id", "500"]) == 0
    pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    assert (np.abs(pixels.astype(int) - [200, 30, 30]).sum(1) < 40).mean() > 0.05  # the red photo is drawn on
    capsys.readouterr()
    assert probe_main([*args, "--image-id", "501", "--out", str(tmp_path / "g.svg")]) == 0
    assert "note: " in capsys.readouterr().out and (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")


def test_a_mistyped_relation_lists_the_relations_the_parses_hold(data, tmp_path, capsys):
    code = probe_main(["syntactic", "--ckpt", str(data["ckpt"]), "--flickr30k", str(data["flickr"]), "--features",
                       str(data["tsv"]), "--parses", str(data["parses"]), "--relation", "nsbj", "--out",
                       str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "relation nsbj does not occur" in err
    assert "relations present: amod, case, det, dobj, npadvmod, nsubj, pobj, poss, prep, punct" in err


def test_entity_then_syntactic_into_one_out_keeps_the_first_run(data, tmp_path, capsys):
    out = tmp_path / "o"
    common = ["--ckpt", str(data["ckpt"]), "--flickr30k", str(data["flickr"]), "--features", str(data["tsv"]),
              "--out", str(out), "--quiet"]
    assert probe_main(["entity-grounding", *common]) == 0
    before = (out / "run.json").read_bytes()
    capsys.readouterr()
    assert probe_main(["syntactic", *common, "--parses", str(data["parses"]), "--relation", "nsubj"]) == 2
    assert "already holds the run.json of entity_grounding" in capsys.readouterr().err
    assert (out / "run.json").read_bytes() == before and not (out / "syntactic.csv").exists()


def test_figures_are_written_in_the_format_their_extension_names(data, tmp_path):
    from matplotlib.figure import Figure

    from vb_probe.atomic import atomic_files
    from vb_probe.errors import VbProbeError

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    with atomic_files(tmp_path) as staged:
        for name in ("f.png", "f.svg", "f.pdf"):
            staged.figure(name, fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:400]
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(VbProbeError, match="name it .png, .svg or .pdf"):
        with atomic_files(tmp_path) as staged:
            staged.figure("f.xyz", fig)


# ------------------------------------------------------------------------------------------- round three

def test_help_says_each_default_once_and_none_for_required_options(capsys):
    from training.cli import build_parser as train_parser
    from vb_probe.cli import build_parser as probe_parser

    for parser in (probe_parser(), train_parser()):
        commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
        for name, command in commands.items():
            text = " ".join(command.format_help().split())
            assert "(default: None)" not in text, name
            for action in command._actions:  # every option says what it is for
                assert action.help, f"{name} {action.option_strings}"
            tokenizer = text.split("--tokenizer TOKENIZER", 1)[-1].split(" --", 1)[0]
            assert tokenizer.count("default") <= 1, name


def test_numbers_print_with_the_files_digits_and_never_negative_zero(data):
    from vb_probe.metrics.causal import causal_summary
    from vb_probe.metrics.intervals import shown

    assert (shown(-0.0004), shown(0.12398), shown(None)) == ("0.000", "0.124", "n/a")
    import vb_probe

    model = vb_probe.load_model(data["ckpt"])
    result = vb_probe.entity_grounding(model, vb_probe.load_tokenizer(model=model), data["flickr"], data["tsv"])
    text = repr(result)
    assert f"highest-confidence {result.baselines['highest_confidence']:.3f}," in text
    intact = np.array([True] * 40 + [False] * 60)
    summary = causal_summary(intact, intact.copy(), np.stack([intact] * 5))  # no drop at all: intervals at 0
    assert "-0.000" not in summary["verdict"]


def test_syntactic_parses_with_spacy_unless_given_parses_as_the_api_does(data, tmp_path, capsys):
    out = tmp_path / "syn"
    assert probe_main(["syntactic", "--ckpt", str(data["ckpt"]), "--flickr30k", str(data["flickr"]), "--features",
                       str(data["tsv"]), "--relation", "nsubj", "--limit", "2", "--out", str(out), "--quiet"]) == 0
    assert "parsing the captions with spaCy" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["parser"].startswith("spacy")


def test_the_explorer_from_python_shows_progress_and_notebooks_get_widgets(data, capsys):
    import vb_probe

    model = vb_probe.load_model(data["ckpt"])
    vb_probe.explore(model, vb_probe.load_tokenizer(model=model), data["flickr"], data["tsv"], limit=2)
    assert "explorer: attention of every head" in capsys.readouterr().err
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("ipywidgets") for r in extras["notebooks"])


def test_reproduce_guide_rehearsal_gives_the_counts_it_promises(tmp_path, capsys):
    """docs/REPRODUCE.md, followed from its first line on the built-in world: check-data prints the table the guide
    shows, row for row; a missing file is listed and the exit code is 2."""
    from training.cli import main as train_main

    guide = (ROOT / "docs" / "REPRODUCE.md").read_text()
    block = guide.split("split   images (Flickr30K Entities)")[1].split("```")[0]
    promised = [line.split() for line in block.strip().splitlines()[1:]]  # below the header
    assert train_main(["world", "--out", str(tmp_path / "rehearsal"), "--scenes", "1000", "--quiet", "--no-images",
                       "--no-hdf5"]) == 0
    capsys.readouterr()
    world = tmp_path / "rehearsal"
    assert probe_main(["check-data", "--flickr30k", str(world / "flickr30k"), "--features",
                       str(world / "features.tsv"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.split()[:1] in (["train"], ["val"], ["test"])]
    assert rows == promised and "nothing is missing" in printed
    (world / "flickr30k" / "Sentences" / f"{(world / 'flickr30k' / 'test.txt').read_text().split()[0]}.txt").unlink()
    assert probe_main(["check-data", "--flickr30k", str(world / "flickr30k"), "--split", "test", "--quiet"]) == 2
    assert "sentence file missing" in capsys.readouterr().out


def _texts(fig) -> list[str]:
    fig.draw_without_rendering()
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")) if t.get_text()]


def test_figures_say_what_they_plot_and_their_labels_do_not_collide(data, tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vb_probe.results import AttributionResult, GroundingResult, HeadScores, SyntacticResult
    from vb_probe.viz.attention import contrast, plot_attention_on_image

    # the attribution grid: its colour bar names agreement, and no dot-size key over dots of one size
    attribution = AttributionResult(np.arange(12).reshape(3, 4), 20, {"n": 20})
    texts = _texts(attribution.plot())
    assert "agreement: most-attended region = top-attributed region" in {" ".join(t.split()) for t in texts}  # wrapped
    assert not any("accuracy (IoU" in t or "dot size" in t for t in texts)
    # Figure 3: the control on the colour bar; legend rows that never overlap
    grid = GroundingResult(np.array([[3, 9], [5, 1]]), 10, np.full((2, 2), 0.5), {"highest_confidence": 0.2,
                           "random": 0.1, "oracle": 1.0}, control=HeadScores(np.array([[2, 1], [1, 4]]), 10))
    grid.selected_head = None
    fig = grid.plot()
    FigureCanvasAgg(fig)
    texts = _texts(fig)
    assert any(t.startswith("random-init control, best head") for t in texts)
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0]
    rows = [h.get_window_extent(renderer) for h in legend.legend_handles]
    assert all(a.y0 >= b.y1 or b.y0 >= a.y1 for i, a in enumerate(rows) for b in rows[:i])
    # Figure 4 with one relation: a direction of n = 1 greyed with its n, no control key when none was run, and
    # the explanation inside the figure
    scores = HeadScores(np.array([[1, 0], [0, 1]]), 1, None, {"highest_confidence": 0.0})
    many = HeadScores(np.array([[10, 20], [30, 5]]), 40, None, {"highest_confidence": 0.25})
    syntactic = SyntacticResult(["nsubj"], {("nsubj", "head_to_dependent"): many,
                                            ("nsubj", "dependent_to_head"): scores}, {})
    fig = syntactic.plot()
    FigureCanvasAgg(fig)
    texts = _texts(fig)
    assert any("n=1, too few to read" in t for t in texts) and not any("random-init control" in t for t in texts)
    whole = fig.bbox
    for text in fig.legends[0].get_texts() + [fig.legends[0].get_title()]:
        box = text.get_window_extent(fig.canvas.get_renderer())
        assert whole.x0 <= box.x0 and box.x1 <= whole.x1, text.get_text()
    # Figures 1/5: labels apart, readable on their colours, and the title says why these layers
    boxes = np.array([[10, 10, 60, 60], [12, 12, 62, 62], [14, 14, 64, 64], [200, 100, 260, 160]], float)
    panels = [{"layer": 0, "head": 1, "accuracy": 0.5, "choices": np.array([0, 1, 2, 3])}]
    fig = plot_attention_on_image(None, (300, 200), boxes, ["man", "dog", "cat", "ball"], [1, 2, 3, 4], panels,
                                  title="the 1 layers whose best head grounds best")
    labels = [t for t in fig.axes[0].texts]
    extents = [t.get_window_extent(fig.canvas.get_renderer()) for t in labels]
    assert len(labels) == 4 and not any(a.overlaps(b) for i, a in enumerate(extents) for b in extents[:i])
    from matplotlib.colors import to_hex

    assert all(contrast(t.get_color(), to_hex(t.get_bbox_patch().get_facecolor())) >= 4.5 for t in labels)


def test_explore_finds_the_images_beside_the_data_without_images(data, tmp_path):
    import shutil

    from PIL import Image

    root = tmp_path / "set"
    shutil.copytree(data["flickr"], root / "flickr")
    (root / "images").mkdir()
    first = (root / "flickr" / "test.txt").read_text().split()[0]
    Image.new("RGB", (400, 300), (200, 230, 190)).save(root / "images" / f"{first}.png")
    assert probe_main(["explore", "--ckpt", str(data["ckpt"]), "--flickr30k", str(root / "flickr"), "--features",
                       str(data["tsv"]), "--limit", "1", "--out", str(tmp_path / "page"), "--quiet"]) == 0
    html = (tmp_path / "page" / "index.html").read_text()
    page = json.loads(html.split('type="application/json">')[1].split("</script>")[0])
    assert page["captions"][0]["picture"].startswith("data:image/jpeg;base64,")
