"""Every command of the README's shell blocks runs as written, so the README cannot drift from the code: the probe,
explorer and sharded commands on tiny models of each family (laid out in a hub cache under the README's own hub
ids) and a small built-in world, with the data folders' names pointed at the world, ``--device cuda`` run on the
CPU (this machine has no GPU) and ``-k`` ablated heads at most 2 (the tiny models have 8); the long jobs (the
demo, pre-training, fine-tuning) are parsed by their command's own parser, every option checked."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import lay_out_hub_cache

ROOT = Path(__file__).resolve().parents[1]
HUB_IDS = {"unc-nlp/lxmert-base-uncased": "lxmert", "dandelin/vilt-b32-mlm": "vilt",
           "llava-hf/llava-1.5-7b-hf": "llava", "llava-hf/llava-1.5-13b-hf": "llava",
           "Qwen/Qwen2-VL-7B-Instruct": "qwen2_vl"}
LONG = ("demo", "pretrain", "finetune", "ablate", "jupyter", "pytest")  # parsed, not run


def readme_commands() -> list[str]:
    """The command lines of the README's shell blocks (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if language not in ("bash", "sh"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = " ".join(line.split("  #")[0].split())
            if line and not line.startswith("#") and re.search(r"\b(vb-probe|vb-train|torchrun)\b", line):
                commands.append(line)
    return commands


def test_the_readme_has_the_commands_this_test_runs():
    commands = readme_commands()
    assert sum("entity-grounding" in c for c in commands) >= 5 and any(c.startswith("torchrun") for c in commands)
    assert any(" explore " in c and "--precision bf16" in c for c in commands)  # the line that failed before


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A small rendered world, and tiny models of each family the README names, in a hub cache of their ids."""
    from training.tiny import write_tiny
    from training.world import build_world

    root = tmp_path_factory.mktemp("readme")
    build_world(root / "world", images=20, seed=5, progress=False, hdf5=False)
    for hub_id, family in HUB_IDS.items():
        folder = root / "models" / hub_id.replace("/", "--")
        write_tiny(family, folder)
        lay_out_hub_cache(root, hub_id, {p.name: p for p in folder.iterdir() if not p.name.startswith(".")})
    return root


def _as_run_here(command: str, world: Path) -> list[str]:
    """The README's command with its data folders pointed at the built-in world, the GPU at the CPU and ``-k`` at 2."""
    words = shlex.split(command)
    names = {"flickr30k_entities": world / "flickr30k", "features.tsv": world / "features.tsv",
             "flickr30k-images": world / "images", "refcoco": world / "refcoco", "train2014": world / "images"}
    words = [str(names.get(w, w)) for w in words]
    for i, word in enumerate(words[:-1]):
        if word == "--device" and words[i + 1] == "cuda":
            words[i + 1] = "cpu"
        if word == "--nproc_per_node":
            words[i + 1] = "2"
        if word == "-k":  # the tiny models have 8 heads: k random others as the control leave at most 4
            words[i + 1] = "2"
    return words


@pytest.mark.parametrize("command", [c for c in readme_commands() if "vb-probe" in c and "demo" not in c.split()])
def test_each_probe_command_of_the_readme_runs_as_written(command, setting, monkeypatch):
    monkeypatch.chdir(setting)  # the README's output folders, relative, land beside the world
    env = {**os.environ, "HF_HUB_CACHE": str(setting / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    words = _as_run_here(command, setting / "world")
    if words[0] == "torchrun":
        words = [sys.executable, "-m", "torch.distributed.run", *words[1:3], "--master_port", "29533", *words[3:]]
    else:
        words = [sys.executable, "-m", "vb_probe", *words[1:]]
    done = subprocess.run(words, capture_output=True, text=True, env=env, cwd=setting, timeout=600)
    assert done.returncode == 0, (command, done.stderr[-2000:])
    out = words[words.index("--out") + 1]
    written = "index.html" if " explore " in command else "causal.json" if " causal " in command else "run.json"
    assert (setting / out / written).is_file()


@pytest.mark.parametrize("command", [c for c in readme_commands() if any(f" {w} " in f" {c} " for w in LONG)
                                     and "pip install" not in c.split("&&")[-1]])
def test_each_long_command_of_the_readme_parses(command):
    """The demo, pre-training and fine-tuning lines: every option known to their command."""
    from training.cli import build_parser as train_parser
    from vb_probe.cli import build_parser as probe_parser

    last = command.split("&&")[-1].strip()
    words = shlex.split(last)
    program = Path(words[0]).name
    if program in ("vb-probe", "vb-train"):
        parser = probe_parser() if program == "vb-probe" else train_parser()
        parser.parse_args(words[1:])  # an unknown option exits 2
