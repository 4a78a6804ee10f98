"""Lossless round trips: every loaded object saves to the very file it came from, a loaded
explanation does from its saved parts what a fresh one does (exemplars, maps, metrics, report,
``conceptkit report``), and the exemplars live in tensors, not in the JSON header."""

from __future__ import annotations

import json
import struct
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import two_block_cnn
from torch import nn

import conceptkit
from conceptkit import bottleneck, concepts
from conceptkit.cli import main as cli_main

IMAGES = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
METHOD_KWARGS = {"ace": {"n_segments": (4,), "min_cluster_size": 1}}


@pytest.fixture(scope="module", params=["craft", "ice", "ace"])
def explained(request, tmp_path_factory):
    method = request.param
    fresh = conceptkit.ConceptExplainer(
        two_block_cnn(), "block2", n_concepts=3, method=method, seed=0, progress=False,
        method_kwargs=METHOD_KWARGS.get(method)).fit(IMAGES, 1)
    root = tmp_path_factory.mktemp(f"round-trip-{method}")
    first = root / "first.safetensors"
    fresh.save(first, n_images=4, n_exemplars=3)
    return fresh, root, first


def _header(path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])


def test_load_save_writes_the_same_file(explained):
    _, root, first = explained
    second = conceptkit.load(first).save(root / "second.safetensors")
    conceptkit.load(second).save(root / "third.safetensors", n_images=8, n_exemplars=12)
    assert first.read_bytes() == (root / "second.safetensors").read_bytes()
    assert first.read_bytes() == (root / "third.safetensors").read_bytes()
    # the exemplar crops are uint8 tensors in the body; the JSON metadata stays small
    header = _header(first)
    assert header["exemplars.0"]["dtype"] == "U8" and header["images"]["dtype"] == "U8"
    assert len(header["__metadata__"]["conceptkit"]) < 20_000


def test_a_loaded_explanation_does_what_a_fresh_one_does(explained):
    fresh, root, first = explained
    loaded = conceptkit.load(first)
    np.testing.assert_array_equal(loaded.importances, fresh.importances)
    np.testing.assert_array_equal(loaded.ranking, fresh.ranking)
    np.testing.assert_array_equal(loaded.ci_low, fresh.ci_low)
    side = min(64, IMAGES.shape[-1])
    for c in range(fresh.n_concepts):
        ex, ids = fresh.top_examples(c, 3, image_size=side)
        got, got_ids = loaded.top_examples(c, 3, image_size=side)
        np.testing.assert_array_equal(got_ids, ids)
        # the saved crops are the fresh ones in uint8
        np.testing.assert_allclose(got.numpy(), ex.numpy(), atol=0.5 / 255 + 1e-6)
    fresh_maps = fresh.concept_maps()[:4]
    np.testing.assert_allclose(loaded.concept_maps().numpy(), fresh_maps.numpy(),
                               rtol=1e-3, atol=1e-3 * float(fresh_maps.abs().max()))
    assert loaded.metrics() == json.loads(json.dumps(fresh.metrics()))
    page = Path(loaded.report(root / "report-loaded"))
    assert page.suffix == ".html" and page.is_file()
    shown = json.loads((page.parent / "report.json").read_text())
    assert [c["index"] for c in shown["concepts"]] == [int(c) for c in fresh.ranking]


def test_conceptkit_report_on_a_reloaded_file(explained):
    fresh, root, first = explained
    if fresh.method != "ice":
        pytest.skip("the command line reads every kind of file alike: one method is enough")
    reloaded = conceptkit.load(first).save(root / "reloaded.safetensors")
    out = StringIO()
    with redirect_stdout(out):
        code = cli_main(["report", str(reloaded), "--out", str(root / "cli-report")])
    assert code == 0
    page = Path(out.getvalue().split("report ", 1)[1].strip())
    assert page.is_file() and (page.parent / "report.json").is_file()


def test_bank_and_cbm_files_round_trip(tmp_path):
    rows = np.abs(np.random.default_rng(0).normal(size=(30, 6)))
    from conceptkit.extraction import Provenance

    provenance = Provenance("crop", np.arange(30) % 5, np.tile([0, 0, 8, 8], (30, 1)), (16, 16))
    bank = concepts.bank_from_activations(concepts.NMF(3, random_state=0), rows, provenance)
    torch.manual_seed(0)
    cbm = bottleneck.ConceptBottleneckModel(nn.Linear(8, 4), 4, 3, head="mlp", hidden=5,
                                            bottleneck="logits")
    cbm.trained_mode = "joint"
    for obj, load in ((bank, concepts.ConceptBank.load),
                      (cbm, bottleneck.ConceptBottleneckModel.load)):
        first = tmp_path / f"{type(obj).__name__}-1.safetensors"
        second = tmp_path / f"{type(obj).__name__}-2.safetensors"
        obj.save(first)
        load(first).save(second)
        assert first.read_bytes() == second.read_bytes(), type(obj).__name__


def test_tiny_and_huge_maps_survive_a_round_trip(tmp_path):
    """Maps were stored as plain float16: pixel maps at 224 px (about 1e-7) lost 13 % of their
    pixels to 0 and moved arg-maxes; maps above 65504 became Inf. They are stored scaled per
    image and concept now."""
    import conceptkit
    from conceptkit.pipeline._persist import _put_maps, _read_maps

    rng = np.random.default_rng(0)
    for magnitude in (1e-7, 1.0, 1e6):
        maps = torch.from_numpy(rng.random((2, 3, 9, 9)).astype(np.float32)) * magnitude
        maps[0, 1] = 0.0  # a concept absent from an image: stays 0, scale 1
        tensors = {}
        _put_maps(tensors, maps)
        back = _read_maps(tensors)
        torch.testing.assert_close(back, maps, rtol=1e-3, atol=0.0)
        assert torch.equal(back.flatten(2).argmax(2), maps.flatten(2).argmax(2))
    del conceptkit


def test_files_of_format_version_1_still_load_and_newer_ones_are_refused(explained, tmp_path):
    """Scaled maps raised the explanation format to version 2 (version 1 readers would show
    the scaled maps as they are); version 1 files, plain float16 maps, load as before."""
    from _forge import forge

    import conceptkit
    from conceptkit.io import FormatError

    path = explained[2]
    fresh = conceptkit.load(path)

    def as_version_1(info, tensors):
        info["format_version"] = 1
        scale = tensors.pop("maps.scale")
        tensors["maps"] = (tensors["maps"].float() * scale[:, :, None, None]).half()

    old = conceptkit.load(forge(path, tmp_path / "v1.safetensors", as_version_1))
    torch.testing.assert_close(old.concept_maps(), fresh.concept_maps().half().float())

    def as_version_3(info, tensors):
        info["format_version"] = 3

    with pytest.raises(FormatError, match="reads versions 1, 2"):
        conceptkit.load(forge(path, tmp_path / "v3.safetensors", as_version_3))
