"""Hostile files within bounds: whatever a file declares, loading it costs time and memory in
proportion to the file, and a file whose parts disagree is refused with a FormatError that
names it, at load time."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from _forge import forge, raw_metadata
from torch import nn

from conceptkit import bottleneck, concepts, io


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    cbm = bottleneck.ConceptBottleneckModel(nn.Linear(8, 4), 4, 3, head="mlp", hidden=5)
    rng = np.random.default_rng(0)
    A = np.abs(rng.normal(size=(30, 6)))
    from conceptkit.extraction import Provenance

    provenance = Provenance("crop", np.arange(30) % 5, np.tile([0, 0, 8, 8], (30, 1)), (16, 16))
    bank = concepts.bank_from_activations(concepts.NMF(3, random_state=0), A, provenance)
    return {"root": root, "cbm": Path_(cbm.save(root / "cbm.safetensors")),
            "bank": Path_(bank.save(root / "bank.safetensors"))}


def Path_(value):
    from pathlib import Path

    return Path(value)


def _refused(load, path, match, seconds=3.0):
    start = time.perf_counter()
    with pytest.raises(io.FormatError, match=match) as err:
        load(path)
    assert time.perf_counter() - start < seconds
    assert str(path) in str(err.value)
    return err.value


def test_a_declared_huge_encoder_is_refused_before_it_is_built(files, monkeypatch):
    def edit(info, tensors):
        info["meta"]["encoder"] = {"type": "linear", "in_features": 50000, "out_features": 40000,
                                   "bias": True}

    path = forge(files["cbm"], files["root"] / "huge-encoder.safetensors", edit)
    assert path.stat().st_size < 4096
    built = []
    real = nn.Linear.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.weight.device.type != "meta":
            built.append(self.weight.numel())

    monkeypatch.setattr(nn.Linear, "__init__", spy)
    _refused(bottleneck.ConceptBottleneckModel.load, path,
             r"concept_encoder.weight: declared \(40000, 50000\), stored \(4, 8\)")
    assert built == []  # nothing allocated for real


@pytest.mark.parametrize("key,value", [("n_concepts", 10**9), ("hidden", 10**12), ("n_classes", 7)])
def test_declared_widths_must_match_the_stored_tensors(files, key, value):
    path = forge(files["cbm"], files["root"] / f"width-{key}.safetensors",
                 lambda info, tensors: info["meta"]["config"].update({key: value}))
    _refused(bottleneck.ConceptBottleneckModel.load, path, "declares|model configuration")


def test_the_load_check_does_not_run_the_files_solver_settings(files):
    def edit(info, tensors):
        info["meta"]["factorizer"]["params"].update(tol=0.0, max_iter=10**7)

    path = forge(files["bank"], files["root"] / "slow-solver.safetensors", edit)
    start = time.perf_counter()
    bank = concepts.ConceptBank.load(path)
    assert time.perf_counter() - start < 3.0
    assert bank.factorizer.max_iter == 10**7  # the user's setting is kept for later use


@pytest.mark.parametrize("case", ["deep", "digits", "deep-tensors"])
def test_malformed_json_headers_are_format_errors(files, case):
    target = files["root"] / f"json-{case}.safetensors"
    if case == "deep":
        path = raw_metadata(files["bank"], target, "[" * 100_000 + "]" * 100_000)
        match = "nested more than 64"
    elif case == "digits":
        path = raw_metadata(files["bank"], target,
                            '{"format": "conceptkit", "kind": "ConceptBank", "format_version": '
                            + "1" * 5000 + "}")
        match = "integer of 20 or more digits"
    else:  # the safetensors header itself, outside the conceptkit metadata
        import struct

        text = ('{"__metadata__": {"x": "y"}, "a": ' + "[" * 50_000 + "]" * 50_000 + "}").encode()
        target.write_bytes(struct.pack("<Q", len(text)) + text)
        path, match = target, "nested more than 64"
    _refused(concepts.ConceptBank.load, path, match)
    with pytest.raises(io.FormatError):
        io.peek_kind(path)


def test_provenance_that_does_not_fit_its_arrays_is_refused(files):
    def edit(info, tensors):
        info["meta"]["provenance"]["source_size"] = [10**9, 10**9]

    path = forge(files["bank"], files["root"] / "huge-images.safetensors", edit)
    _refused(concepts.ConceptBank.load, path, "source_size")


def test_an_altered_file_is_refused_by_its_digest(files):
    def edit(info, tensors):
        # still consistent (the bank's dictionary and its factorizer's alike), but not saved so
        tensors["components"] = tensors["components"] * 1.5
        tensors["factorizer.components_"] = tensors["factorizer.components_"] * 1.5

    path = forge(files["bank"], files["root"] / "altered.safetensors", edit, sign=False)
    _refused(concepts.ConceptBank.load, path, "does not match the digest")
    signed = forge(files["bank"], files["root"] / "re-signed.safetensors", edit)
    assert concepts.ConceptBank.load(signed).components.shape == (3, 6)  # a forger's file loads


@pytest.fixture(scope="module")
def explanation_file(files):
    import conceptkit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 3)).eval()
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    result = conceptkit.ConceptExplainer(model, "1", n_concepts=3, method="ice", seed=0,
                                         progress=False).fit(images, 1)
    return Path_(result.save(files["root"] / "explanation.safetensors", n_images=2, n_exemplars=2))


def _maps_k7(info, tensors):
    tensors["maps"] = torch.zeros(2, 7, 16, 16, dtype=torch.float16)


def _ci_length(info, tensors):
    tensors["importance.ci_low"] = tensors["importance.ci_low"][:2].clone()


def _exemplar_ids(info, tensors):
    info["meta"]["exemplar_ids"][1] = info["meta"]["exemplar_ids"][1][:1]


def _maps_images(info, tensors):
    tensors["maps"] = tensors["maps"][:1].clone()
    tensors["maps.scale"] = tensors["maps.scale"][:1].clone()


def _no_exemplars(info, tensors):
    del tensors["exemplars.2"]


def _grey_images(info, tensors):
    tensors["images"] = tensors["images"][:, :1].clone()


def _nan_maps(info, tensors):
    tensors["maps"] = tensors["maps"].clone()
    tensors["maps"][0, 0, 0, 0] = float("nan")


def _infinite_ci(info, tensors):
    tensors["importance.ci_high"] = tensors["importance.ci_high"].clone()
    tensors["importance.ci_high"][0] = float("inf")


def _text_timing(info, tensors):
    info["meta"]["timings"]["total"] = "fast"


def _grey_exemplars(info, tensors):
    tensors["exemplars.0"] = tensors["exemplars.0"][:, :1].clone()


def _listed_params(info, tensors):
    info["meta"]["importance"]["params"] = [1, 2]


def _zero_scale(info, tensors):
    tensors["maps.scale"] = torch.zeros_like(tensors["maps.scale"])


INCONSISTENT = {"maps-k7": (_maps_k7, "maps of shape"), "ci-length": (_ci_length, "confidence"),
                # each of these loaded, and failed later in the report without naming the file
                "grey-images": (_grey_images, "RGB"), "nan-maps": (_nan_maps, "NaN"),
                "infinite-ci": (_infinite_ci, "infinite bounds"),
                "text-timing": (_text_timing, "timings"),
                "grey-exemplars": (_grey_exemplars, "exemplars of concept 0"),
                "listed-params": (_listed_params, "importance metadata"),
                "zero-scale": (_zero_scale, "map scales"),
                "exemplar-ids": (_exemplar_ids, "exemplars of concept 1"),
                "maps-images": (_maps_images, "for images of shape"),
                "some-exemplars": (_no_exemplars, "exemplars of some concepts")}


@pytest.mark.parametrize("case", sorted(INCONSISTENT))
def test_explanations_whose_parts_disagree_are_refused_at_load(explanation_file, case):
    import conceptkit

    edit, match = INCONSISTENT[case]
    path = forge(explanation_file, explanation_file.with_name(f"{case}.safetensors"), edit)
    _refused(conceptkit.load, path, match)


def _scale(name, factor, shift=0.0):
    def edit(info, tensors):
        tensors[name] = tensors[name] * factor + shift
    return edit


BANK_FORGERIES = {
    # the bank's dictionary and its factorizer's disagree: encode reads one, maps the other
    "components differ": (_scale("components", 5.0, 1.0), "components differ"),
    "negative NMF codes": (_scale("codes", -1000.0), "negative codes"),
    "negative NMF dictionary": (_scale("factorizer.components_", -1.0), "non-negative"),
    "repeated concept ids": (lambda info, t: t.__setitem__("concept_ids", torch.tensor([4, -5, 4])),
                             "concept_ids"),
}


@pytest.mark.parametrize("case", sorted(BANK_FORGERIES))
def test_banks_whose_invariants_are_broken_are_refused(files, case):
    edit, match = BANK_FORGERIES[case]
    path = forge(files["bank"], files["root"] / f"bank-{case.replace(' ', '-')}.safetensors",
                 edit)
    _refused(concepts.ConceptBank.load, path, match)


@pytest.mark.parametrize("value,match", [(-1.0, "temperature_"), (float("nan"), "temperature_")])
def test_a_kmeans_bank_with_a_non_positive_temperature_is_refused(files, value, match):
    from conceptkit.extraction import Provenance

    rows = np.abs(np.random.default_rng(1).normal(size=(30, 6)))
    provenance = Provenance("crop", np.arange(30) % 5, np.tile([0, 0, 8, 8], (30, 1)), (16, 16))
    bank = concepts.bank_from_activations(
        concepts.KMeansConcepts(3, codes="soft", random_state=0), rows, provenance)
    source = Path_(bank.save(files["root"] / "kmeans.safetensors"))

    def edit(info, tensors):
        info["meta"]["factorizer"]["info"]["temperature_"] = value

    _refused(concepts.ConceptBank.load,
             forge(source, files["root"] / "kmeans-temperature.safetensors", edit), match)


def test_an_infinite_format_version_is_a_format_error(files):
    path = raw_metadata(files["bank"], files["root"] / "version-inf.safetensors",
                        '{"format": "conceptkit", "kind": "ConceptBank", "format_version": 1e400}')
    with pytest.raises(io.FormatError, match="not a conceptkit save"):
        io.peek_kind(path)
    _refused(concepts.ConceptBank.load, path, "format version")


def test_a_pipe_is_refused_without_waiting_for_a_writer(files):
    import os

    fifo = files["root"] / "pipe.safetensors"
    os.mkfifo(fifo)
    _refused(concepts.ConceptBank.load, fifo, "not a regular file", seconds=2.0)
    with pytest.raises(io.FormatError, match="not a regular file"):
        io.peek_kind(fifo)


def test_a_missing_spec_of_an_encoder_whose_spec_is_always_stored_is_damage(files):
    path = forge(files["cbm"], files["root"] / "no-spec.safetensors",
                 lambda info, tensors: info["meta"].pop("encoder"))
    _refused(bottleneck.ConceptBottleneckModel.load, path, "'Linear' encoder but its architecture")


# ---------------------------------------------------------------------------------------------
# JSON bombs: a header is bounded by its size and by its number of lists, objects and values
# before it is parsed; a manifest too.
# ---------------------------------------------------------------------------------------------

def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


_EMPTY_LISTS = "[" + "[]," * (8 * 1024 * 1024 // 3) + "[]]"  # 8 MiB: 2.8 million lists, 2 deep


@pytest.mark.parametrize("where", ["header", "metadata"])
def test_a_header_of_millions_of_empty_lists_is_refused_before_it_is_parsed(files, where):
    import struct

    target = files["root"] / f"bomb-{where}.safetensors"
    if where == "header":  # the safetensors header itself
        text = ('{"__metadata__": {"x": "y"}, "junk": ' + _EMPTY_LISTS + "}").encode()
        target.write_bytes(struct.pack("<Q", len(text)) + text)
        path = target
    else:  # the conceptkit metadata, a string inside it
        path = raw_metadata(files["bank"], target, '{"format": "conceptkit", "kind": '
                            '"ConceptBank", "format_version": 1, "meta": ' + _EMPTY_LISTS + "}")
    peak = _peak_mb()
    _refused(concepts.ConceptBank.load, path, r"279620\d JSON lists and objects holding \d+ "
             r"values, more than conceptkit writes \(at most 200000 lists")
    assert _peak_mb() - peak < 128  # parsing it took +1.2 GB per 30 MiB
    with pytest.raises(io.FormatError, match="lists and objects"):
        io.peek_kind(path)


def test_a_header_larger_than_conceptkit_reads_is_refused_before_it_is_read(files):
    import struct

    path = files["root"] / "huge-header.safetensors"
    with open(path, "wb") as fh:  # a sparse file: 17 MiB of header claimed, and present
        fh.write(struct.pack("<Q", 17 * 1024 * 1024))
        fh.truncate(8 + 17 * 1024 * 1024)
    _refused(concepts.ConceptBank.load, path, "17825792 bytes of JSON, more than the 16777216")


def test_a_long_string_in_the_metadata_is_scanned_in_bounded_memory(files):
    # the scan before parsing matched strings with a regular expression that kept about 100
    # bytes per character of a string: +690 MB for these 6 MB
    path = forge(files["bank"], files["root"] / "long-note.safetensors",
                 lambda info, tensors: info["meta"].update(note="x" * 6_000_000))
    peak, start = _peak_mb(), time.perf_counter()
    assert concepts.ConceptBank.load(path).components.shape == (3, 6)
    assert time.perf_counter() - start < 3.0
    assert _peak_mb() - peak < 128


def test_the_largest_headers_conceptkit_writes_load_within_the_limits(tmp_path):
    # an atlas of 10,000 concepts stores 40,000 exemplar tensors (120,000 lists and objects in
    # its header); a CBM over a vocabulary of 20,000 concept names keeps them in its metadata
    tensors = {f"exemplars.{j}.{part}": torch.zeros(1, dtype=torch.uint8)
               for j in range(10_000) for part in ("images", "maps", "labels", "ids")}
    names = [f"concept name number {i} of the vocabulary" for i in range(20_000)]
    path = io.save_file(tmp_path / "big.safetensors", tensors, {"concept_names": names},
                        kind="big_test_file", version=1)
    loaded, meta = io.load_file(path, kind="big_test_file", version=1)
    assert len(loaded) == 40_000 and meta["concept_names"] == names


def test_a_manifest_bomb_is_refused_before_it_is_parsed(tmp_path):
    from conceptkit import extraction

    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text('{"format": "conceptkit-activation-store", "junk": '
                                         + _EMPTY_LISTS + "}")
    peak, start = _peak_mb(), time.perf_counter()
    with pytest.raises(io.FormatError, match="lists and objects holding") as err:
        extraction.ActivationStore(store)
    assert time.perf_counter() - start < 3.0 and _peak_mb() - peak < 128
    assert str(store) in str(err.value)
    with open(store / "manifest.json", "r+b") as fh:  # larger than any manifest: not even read
        fh.truncate(33 * 1024 * 1024)
    with pytest.raises(io.FormatError, match="34603008 bytes, more than the 33554432"):
        extraction.ActivationStore(store)


# ---------------------------------------------------------------------------------------------
# Digests: a file of a format version saved with a digest must carry it
# ---------------------------------------------------------------------------------------------

def _without_digest(info, tensors):
    del info["digest"]


def test_a_file_whose_digest_was_removed_is_refused(files, explanation_file, tmp_path):
    import conceptkit

    edited = forge(explanation_file, files["root"] / "no-digest.safetensors",
                   lambda info, tensors: (_without_digest(info, tensors),
                                          info["meta"].update(class_name="tampered")), sign=False)
    _refused(conceptkit.load, edited, "its content digest is missing, but every ClassConcepts "
                                      "file of format version 2 is saved with one")
    # a kind this conceptkit has always signed (and every kind or version to come)
    path = io.save_file(tmp_path / "new-kind.safetensors", {"x": torch.zeros(2)}, {},
                        kind="new_kind", version=3)
    unsigned = forge(path, tmp_path / "new-kind-unsigned.safetensors", _without_digest,
                     sign=False)
    with pytest.raises(io.FormatError, match="digest is missing"):
        io.load_file(unsigned, kind="new_kind", version=3)
    # a bank of format version 1 may have been written by conceptkit 0.1.0, before digests:
    # it loads, checked by the bank's own checks
    legacy = forge(files["bank"], files["root"] / "bank-0.1.0.safetensors", _without_digest,
                   sign=False)
    assert concepts.ConceptBank.load(legacy).components.shape == (3, 6)


@pytest.fixture
def store(tmp_path):
    from conceptkit import extraction

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten()).eval()
    extractor = extraction.ActivationExtractor(model, "1", progress=False)
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    extraction.write_store(extractor, images, tmp_path / "store", chunk_size=4, progress=False)
    return tmp_path / "store"


def test_a_manifest_whose_digest_was_removed_is_refused_if_it_records_chunk_digests(store):
    import json

    from conceptkit import extraction

    manifest = json.loads((store / "manifest.json").read_text())
    edited = {key: value for key, value in manifest.items() if key != "digest"}
    edited["meta"] = {**edited.get("meta", {}), "note": "edited"}
    (store / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(io.FormatError, match="the digest of manifest.json is missing") as err:
        extraction.ActivationStore(store)
    assert str(store) in str(err.value)
    # a store of conceptkit 0.1.0 recorded neither digest: it still loads
    for entry in edited["chunks"]:
        del entry["digest"]
    (store / "manifest.json").write_text(json.dumps(edited))
    assert extraction.ActivationStore(store).shape == (6, 4)


def test_a_chunk_rewritten_in_place_with_its_mtime_restored_is_noticed(store):
    import os

    from conceptkit import extraction

    opened = extraction.ActivationStore(store)
    opened.chunk(0)  # verified, and remembered as verified
    file = store / "chunk-000000.npy"
    state = os.stat(file)
    time.sleep(0.05)  # the change time moves on (coarse kernel clocks tick every 4-10 ms)
    with open(file, "r+b") as fh:  # same size, same inode
        fh.seek(state.st_size - 4)
        fh.write(np.float32(999.0).tobytes())
    os.utime(file, ns=(state.st_atime_ns, state.st_mtime_ns))
    assert os.stat(file).st_mtime_ns == state.st_mtime_ns
    with pytest.raises(io.FormatError, match="does not match the digest its manifest recorded"):
        opened.chunk(0)  # it was served altered: the file's state looked the same
