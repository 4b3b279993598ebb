"""The explorer in a real browser (Chromium from the distribution, driven by Selenium, offline): the region the
page marks is the probe's argmax, the accuracy shown is the CSV's, no console error, no request leaves the page.
Without a browser the tests skip on a developer's machine and fail under CI (.ci/run installs one)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from fixtures import write_probe_set

from vb_probe.cli import main as probe_main


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        message = "no chromium / chromedriver: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,950",
                     "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    data = write_probe_set(root, n_images=8)
    common = ["--ckpt", str(data["ckpt"]), "--flickr30k", str(data["flickr"]), "--features", str(data["tsv"]),
              "--limit", "4"]
    assert probe_main(["explore", *common, "--parses", str(data["parses"]), "--out", str(root / "explorer"),
                       "--quiet"]) == 0
    assert probe_main(["entity-grounding", *common, "--out", str(root / "eg"), "--quiet"]) == 0
    return {**data, "html": root / "explorer" / "index.html", "eg": root / "eg"}


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    yield driver
    driver.quit()


def test_the_page_marks_the_probes_argmax_and_shows_the_csvs_accuracy(page, browser, tmp_path):
    import csv

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from vb_probe.api import load_model, load_tokenizer
    from vb_probe.caption_rows import word_region_choices
    from vb_probe.data.features import open_features
    from vb_probe.data.flickr30k import Flickr30kEntities

    html = page["html"].read_text()
    assert "<script src" not in html and "<link" not in html  # everything inline
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    browser.get(page["html"].as_uri())
    model = load_model(page["ckpt"])
    tokenizer = load_tokenizer(model=model)
    flickr, features = Flickr30kEntities(page["flickr"]), open_features(page["tsv"])
    with open(page["eg"] / "entity_grounding.csv") as handle:
        accuracy = {(int(r["layer"]), int(r["head"])): r["accuracy"] for r in csv.DictReader(handle)}
    checked = 0
    for layer, head in ((2, 1), (0, 3)):
        browser.find_element(By.CSS_SELECTOR, f'#grid rect[data-layer="{layer}"][data-head="{head}"]').click()
        assert browser.find_element(By.ID, "head-accuracy").text == accuracy[(layer, head)]
        for caption_index in (0, 3):
            browser.find_element(By.CSS_SELECTOR, f'#captions li[data-caption="{caption_index}"]').click()
            key = browser.find_element(By.CSS_SELECTOR, "#captions li.selected").text.split(":")[0]
            image_id, index = key.rsplit("_", 1)
            caption = flickr.captions(image_id)[int(index)]
            choices = word_region_choices(model, tokenizer, caption.words, features[image_id])
            for span in browser.find_elements(By.CSS_SELECTOR, "#caption span.query"):
                ActionChains(browser).move_to_element(span).perform()
                word = int(span.get_attribute("data-word"))
                marked = browser.find_element(By.CSS_SELECTOR, '#view rect[data-picked="true"]')
                assert int(marked.get_attribute("data-region")) == choices[layer, head, word]
                assert browser.find_element(By.ID, "picked-region").text == str(choices[layer, head, word])
                checked += 1
    assert checked >= 8
    # the relation view: the verb's attention, towards its subject's phrase
    from selenium.webdriver.support.ui import Select

    views = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#mode option")]
    assert {"nsubj/head_to_dependent", "amod/dependent_to_head"} <= set(views)  # both directions where they exist
    Select(browser.find_element(By.ID, "mode")).select_by_value("nsubj/head_to_dependent")
    browser.find_element(By.CSS_SELECTOR, '#captions li[data-caption="0"]').click()
    verbs = browser.find_elements(By.CSS_SELECTOR, "#caption span.query")
    assert verbs and browser.find_elements(By.CSS_SELECTOR, "#arcs path")
    ActionChains(browser).move_to_element(verbs[0]).perform()
    caption = flickr.captions(flickr.split("test")[0])[0]
    choices = word_region_choices(model, tokenizer, caption.words, features[caption.image_id])
    marked = browser.find_element(By.CSS_SELECTOR, '#view rect[data-picked="true"]')
    assert int(marked.get_attribute("data-region")) == choices[0, 3, int(verbs[0].get_attribute("data-word"))]
    Select(browser.find_element(By.ID, "mode")).select_by_value("amod/dependent_to_head")  # the reverse direction
    adjectives = browser.find_elements(By.CSS_SELECTOR, "#caption span.query")
    ActionChains(browser).move_to_element(adjectives[0]).perform()
    marked = browser.find_element(By.CSS_SELECTOR, '#view rect[data-picked="true"]')
    assert int(marked.get_attribute("data-region")) == choices[0, 3, int(adjectives[0].get_attribute("data-word"))]
    # the layer control steps to that layer's best head; the search filters the list
    browser.execute_script("const s = document.getElementById('layer'); s.value = 1; "
                           "s.dispatchEvent(new Event('input'));")
    data = json.loads(browser.find_element(By.ID, "vb-data").get_attribute("textContent"))
    best = data["modes"]["amod/dependent_to_head"]["per_layer_best"][1]  # the current mode's best head
    assert browser.find_element(By.ID, "head-label").text == f"L1H{best}"
    search = browser.find_element(By.ID, "search")
    search.send_keys(caption.words[1])
    assert 0 < len(browser.find_elements(By.CSS_SELECTOR, "#captions li")) <= 8
    browser.find_element(By.ID, "export-svg").click()
    browser.find_element(By.ID, "play").click()
    browser.find_element(By.ID, "play").click()
    browser.save_screenshot(str(tmp_path / "explorer.png"))
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    requests = {json.loads(e["message"])["message"]["params"]["request"]["url"].split(":")[0]
                for e in browser.get_log("performance")
                if json.loads(e["message"])["message"]["method"] == "Network.requestWillBeSent"}
    assert requests <= {"file", "data"}, requests  # nothing left the page


def test_explorer_object_shows_itself_in_a_notebook_frame(page):
    import vb_probe

    model = vb_probe.load_model(page["ckpt"])
    shown = vb_probe.explore(model, vb_probe.load_tokenizer(model=model), page["flickr"], page["tsv"], limit=2)
    markup = shown._repr_html_()
    assert markup.startswith("<iframe srcdoc=") and "require" not in markup.lower() and "cdn" not in markup.lower()
    assert len(shown.data["captions"]) == 4 and shown.data["layers"] == 3  # 2 images × 2 captions


def test_each_mode_has_its_own_grid_and_the_page_says_what_it_shows(page, browser):
    """Relation modes show their own grid, best heads and baselines (counted on the captions shown with the
    probe's rule, equal to the syntactic probe on the same captions); the darkening and the boxes have a key;
    a region says its attention on hover; exports are named by caption and head; an empty search says so."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    import vb_probe

    browser.set_window_size(1500, 950)
    browser.get(page["html"].as_uri())
    data = json.loads(browser.find_element(By.ID, "vb-data").get_attribute("textContent"))
    view = "nsubj/head_to_dependent"
    mode = data["modes"][view]
    model = vb_probe.load_model(page["ckpt"])
    probe = vb_probe.syntactic_grounding(model, vb_probe.load_tokenizer(model=model), page["flickr"], page["tsv"],
                                         relations=("nsubj",), parses=page["parses"], limit=4)
    counts = probe[("nsubj", "head_to_dependent")]
    assert mode["n"] == counts.n
    assert mode["accuracy"] == [[f"{a:.6f}" for a in row] for row in counts.accuracy]
    Select(browser.find_element(By.ID, "mode")).select_by_value(view)
    layer = 2
    browser.execute_script(f"const s = document.getElementById('layer'); s.value = {layer}; "
                           "s.dispatchEvent(new Event('input'));")
    best = mode["per_layer_best"][layer]
    assert browser.find_element(By.ID, "head-label").text == f"L{layer}H{best}"
    assert browser.find_element(By.ID, "head-accuracy").text == mode["accuracy"][layer][best]
    cell = browser.find_element(By.CSS_SELECTOR, f'#grid rect[data-layer="{layer}"][data-head="{best}"]')
    assert cell.get_attribute("data-accuracy") == mode["accuracy"][layer][best]
    assert f"{mode['n']} arcs of the captions shown" in browser.find_element(By.ID, "scale").text
    Select(browser.find_element(By.ID, "mode")).select_by_value("entity")
    assert browser.find_element(By.ID, "head-label").text == f"L{layer}H{data['per_layer_best'][layer]}"
    legend = browser.find_element(By.ID, "legend").text
    assert "darker" in legend and "gold boxes" in legend and "hits gold" in legend and "misses" in legend
    axis = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#grid text.axis")]
    assert axis == ["head", "layer"]
    words = browser.find_elements(By.CSS_SELECTOR, "#caption span.query")
    ActionChains(browser).move_to_element(words[0]).perform()
    title = browser.find_element(By.CSS_SELECTOR, '#view rect.region[data-region="0"] title')
    assert title.get_attribute("textContent").startswith("region 0: attention 0.")
    names = browser.execute_script(
        "window.__names = []; HTMLAnchorElement.prototype.click = function () { window.__names.push(this.download); };"
        "document.getElementById('export-svg').click(); return window.__names;")
    key = browser.find_element(By.CSS_SELECTOR, "#captions li.selected").get_attribute("textContent").split(":")[0]
    assert names == [f"{key}_L{layer}H{data['per_layer_best'][layer]}.svg"]
    search = browser.find_element(By.ID, "search")
    search.clear()
    search.send_keys("zebra-that-is-not-there")
    assert browser.find_element(By.ID, "no-match").text == "no caption contains “zebra-that-is-not-there”"
    browser.set_window_size(900, 1200)  # a narrow window: nothing runs off the side
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 900
    browser.set_window_size(1500, 950)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_the_page_draws_each_phrases_box_from_heads_beside_its_gold(browser, tmp_path):
    """A vb-probe ground run on a tiny LLaVA, then the explorer with --ground: for each phrase the page draws the
    box ground.csv holds under the chosen setting (another setting, another box), and says its IoU."""
    import csv
    import sys
    from pathlib import Path

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    sys.path.insert(0, str(Path(__file__).parent))
    from decoder_fixtures import save_model_folder
    from test_vilt import _write_world

    world = _write_world(tmp_path / "world")
    save_model_folder("llava", tmp_path / "ckpt", layers=4, image_size=112)
    common = ["--ckpt", str(tmp_path / "ckpt"), "--flickr30k", str(world["flickr"]), "--images", str(world["images"]),
              "--quiet"]
    assert probe_main(["ground", *common, "--k", "1", "--k", "3", "--choice", "gold", "--choice", "random",
                       "--out", str(tmp_path / "ground")]) == 0
    assert probe_main(["explore", *common, "--ground", str(tmp_path / "ground"), "--limit", "2",
                       "--out", str(tmp_path / "explorer")]) == 0
    with open(tmp_path / "ground" / "ground.csv") as handle:
        rows = {(r["image_id"], r["expression"], r["setting"]): r for r in csv.DictReader(handle)}
    browser.get((tmp_path / "explorer" / "index.html").as_uri())
    settings = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#ground option")]
    assert settings[:2] == ["gold/k1/paper", "gold/k1/released"] and len(settings) == 16
    checked = 0
    for setting in ("gold/k1/paper", "random/k3/centroid"):
        Select(browser.find_element(By.ID, "ground")).select_by_value(setting)
        for caption_index in (0, 1):
            browser.find_element(By.CSS_SELECTOR, f'#captions li[data-caption="{caption_index}"]').click()
            key = browser.find_element(By.CSS_SELECTOR, "#captions li.selected").text.split(":")[0]
            image_id = key.rsplit("_", 1)[0]
            span = browser.find_element(By.CSS_SELECTOR, "#caption span.query")
            ActionChains(browser).move_to_element(span).perform()
            phrase = " ".join(s.text for s in browser.find_elements(By.CSS_SELECTOR, "#caption span")[:3]
                              if s.text != ".")
            row = next(r for (i, text, s), r in rows.items() if i == image_id and s == setting
                       and phrase.startswith(text))
            drawn = browser.find_element(By.CSS_SELECTOR, "#view rect.ground")
            box = [float(drawn.get_attribute(a)) for a in ("x", "y", "width", "height")]
            expected = [float(row["x1"]), float(row["y1"]), float(row["x2"]) - float(row["x1"]),
                        float(row["y2"]) - float(row["y1"])]
            assert box == pytest.approx(expected, abs=0.11)  # one decimal on the page
            assert ("hit" in drawn.get_attribute("class")) == (row["hit_iou50"] == "1")
            assert f"IoU {float(row['iou']):.3f}" in browser.find_element(By.ID, "status").text
            checked += 1
    assert checked == 4 and not browser.find_element(By.ID, "key-ground").get_attribute("hidden")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
