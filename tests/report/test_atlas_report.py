"""The atlas report: pages, links both ways, numbers matching atlas.json, and (in headless
Chromium) every picture decoding."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conceptkit import ConceptAtlas
from conceptkit.datasets import make_concept_dataset, reference_model


@pytest.fixture(scope="module")
def atlas_and_report(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        world = make_concept_dataset(8, seed=5, split="test")
        atlas = ConceptAtlas(reference_model(), "block4", 6, method="ice", importance="closed_form",
                             seed=0, progress=False, class_names=world.class_names).fit(world)
        out = tmp_path_factory.mktemp("atlas-report")
        index = atlas.report(out, n_exemplars=6, n_confusions=3,
                             class_pages={0: "../per-class/class-0/index.html"})
    finally:
        torch.set_num_threads(before)
    return atlas, index


def hrefs(page: Path) -> list[str]:
    return re.findall(r'href="([^"#]+)"', page.read_text(encoding="utf-8"))


def test_pages_and_links_resolve_both_ways(atlas_and_report):
    atlas, index = atlas_and_report
    out = index.parent
    k = atlas.n_concepts
    concept_pages = sorted((out / "concepts").glob("concept-*.html"))
    class_pages = sorted((out / "classes").glob("class-*.html"))
    assert len(concept_pages) == k and len(class_pages) == 6
    for page in [index, *concept_pages, *class_pages]:
        for link in hrefs(page):
            if "per-class" in link:
                continue  # the external per-class report (not written here)
            assert (page.parent / link).resolve().is_file(), f"{page.name} -> {link}"
    # class page -> its concepts -> back to the class
    class0 = (out / "classes" / "class-0.html").read_text(encoding="utf-8")
    assert "../per-class/class-0/index.html" in class0
    top = int(np.argmax(atlas.importance.values[0]))
    assert f'href="../concepts/concept-{top}.html"' in class0
    concept = (out / "concepts" / f"concept-{top}.html").read_text(encoding="utf-8")
    assert 'href="../classes/class-0.html"' in concept and 'href="../index.html"' in concept


def test_json_holds_the_numbers_shown(atlas_and_report):
    atlas, index = atlas_and_report
    payload = json.loads((index.parent / "atlas.json").read_text())
    np.testing.assert_allclose(payload["importance"], atlas.importance.values)
    assert sorted(payload["row_order"]) == list(range(6))
    assert sorted(payload["column_order"]) == list(range(atlas.n_concepts))
    assert payload["important"] == atlas.importance.important().tolist()
    first = payload["confusions"][0]
    a, b, p = atlas.most_confused_pairs(1)[0]
    assert (first["a"], first["b"]) == (a, b) and first["probability"] == pytest.approx(p)
    html = index.read_text(encoding="utf-8")
    assert html.count("<img") == 2 and "Most confused class pairs" in html


CHECK = """<script>window.addEventListener("load", function () {
  var im = document.images, ok = 0;
  for (var i = 0; i < im.length; i++) { if (im[i].complete && im[i].naturalWidth > 0) ok++; }
  document.title = "images-loaded:" + ok + "/" + im.length; });</script>"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("headless Chromium is required in CI for the atlas report check; "
                        "install it with `apt-get install -y chromium`.")
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI runs this check.")
    return path


@pytest.mark.browser
@pytest.mark.parametrize("page, expected", [("index.html", 2), ("concepts/concept-0.html", 1)])
def test_pictures_decode_in_headless_chromium(atlas_and_report, tmp_path, page, expected):
    _, index = atlas_and_report
    source = index.parent / page
    copy = source.with_name("browser-check.html")
    copy.write_text(source.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"),
                    encoding="utf-8")
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
               "--dump-dom", copy.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", result.stdout)
    assert title and title.group(1) == f"images-loaded:{expected}/{expected}"


def test_an_atlas_of_stored_activations_shows_its_maps_alone_and_says_why(tmp_path):
    """A store holds no pixels: each exemplar was an 8x8 flat grey tile blended with its map
    under the caption "Top images ... with the concept's map" (found by the second CLI
    review). The maps are drawn alone, enlarged, and the caption says why; the index has no
    always-empty "per-class report" column."""
    from PIL import Image

    from conceptkit.extraction import ActivationExtractor, write_store

    world = make_concept_dataset(3, seed=5, split="test")
    model = reference_model()
    store = write_store(ActivationExtractor(model, "block4", progress=False), world.images,
                        tmp_path / "store", layout="maps", progress=False)
    atlas = ConceptAtlas(model, "block4", 4, method="ice", importance="closed_form", seed=0,
                         progress=False).fit(store, labels=world.labels)
    index = atlas.report(tmp_path / "report", n_exemplars=4)
    page = (index.parent / "concepts" / "concept-0.html").read_text(encoding="utf-8")
    assert "hold no pixels to show" in page and "Top images across" not in page
    tiles = Image.open(index.parent / "concepts" / "concept-0.png")
    assert min(tiles.size) >= 64  # 8x8 cells enlarged to be seen
    pixels = np.asarray(tiles.convert("RGB")).reshape(-1, 3)
    assert not (pixels == 127).all(axis=1).any()  # no grey placeholder blended in
    assert "per-class report" not in index.read_text(encoding="utf-8")


def test_the_index_lists_per_class_reports_only_when_there_are_some(atlas_and_report):
    _, index = atlas_and_report
    assert "per-class report" in index.read_text(encoding="utf-8")  # class_pages was given
