"""The written report opened in headless Chromium: every image decodes and the page renders.

Needs Debian's ``chromium`` (``apt-get install chromium``); without it these tests fail (they do
not skip), so that a CI without a browser is noticed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _shared import make_report
from PIL import Image

from conceptkit.report import write_reports

pytestmark = pytest.mark.browser

# Injected into a copy of each page (the product pages carry no test code): once everything has
# loaded, the title reports how many <img> decoded to a non-empty picture.
CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var images = document.images, decoded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) decoded++;
  }
  document.title = "images-loaded:" + decoded + "/" + images.length;
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is required for the report browser test but `chromium` is not "
                "on PATH; install it with `apt-get install -y chromium` (Debian) or deselect "
                "with `-m 'not browser'`.")


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", f"--user-data-dir={profile}", *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"chromium did not finish within 90 s: {' '.join(command)}\n{err.stderr}")
    assert result.returncode == 0, f"chromium failed ({result.returncode}):\n{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser-report")
    reports = [make_report(class_id=c, class_name=name, seed=c, side=96)
               for c, name in ((0, "cats"), (7, "dogs & wolves"))]
    write_reports(reports, out, title="Browser check")
    return out


def checked_copy(page: Path) -> Path:
    copy = page.with_name("browser-check.html")
    text = page.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    copy.write_text(text.replace("</body>", CHECK_SCRIPT + "\n</body>"), encoding="utf-8")
    return copy


@pytest.mark.parametrize("page, expected_images", [("index.html", 2),
                                                    ("class-7-dogs-wolves/index.html", 5)])
def test_every_image_of_the_page_loads(report_dir, tmp_path, page, expected_images):
    copy = checked_copy(report_dir / page)
    dom = run_chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom",
                       copy.as_uri()).stdout
    title = re.search(r"<title>(.*?)</title>", dom)
    assert title, f"no <title> in the DOM dump:\n{dom[:500]}"
    assert title.group(1) == f"images-loaded:{expected_images}/{expected_images}"
    if page == "index.html":
        for folder in ("class-0-cats", "class-7-dogs-wolves"):
            assert f'href="{folder}/index.html"' in dom
            assert (report_dir / folder / "index.html").is_file()


def test_screenshot_of_class_page_is_not_blank(report_dir, tmp_path):
    shot = tmp_path / "class.png"
    page = report_dir / "class-0-cats" / "index.html"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000",
                 "--hide-scrollbars", page.as_uri())
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20, "the screenshot is (nearly) a single colour"
    packed = pixels.astype(np.int64) @ np.array([65536, 256, 1])
    colours = np.unique(packed)
    assert len(colours) > 200, f"only {len(colours)} distinct colours: figures did not render"
    not_white = (pixels < 240).any(axis=2).mean()
    assert 0.05 < not_white < 0.9, f"{not_white:.1%} of the screenshot is not white"
    # The importance chart's first bar (tab10 blue, #1f77b4) is on screen.
    blue = (np.abs(pixels - np.array([31, 119, 180])).max(axis=2) < 6).sum()
    assert blue > 500, f"the first concept's colour covers only {blue} pixels"
