"""Rows of the bad-input matrix for the second reliability round (issue 15): stores that cannot
go stale, hostile files, wrapped and scripted models, numbers at the edges, inputs and models,
the command line's contract and files on disk. ``test_errors.py`` appends them to its table;
each call takes the table's shared context ``c`` (its model, images, saved files, ``c.root``)."""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _forge import forge, raw_metadata, set_meta
from torch import nn

import conceptkit
from conceptkit import bottleneck, concepts, extraction, importance, io
from conceptkit.extraction._store import manifest_digest, write_chunks

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------------

def _extractor(c, layer: str = "block2", model: nn.Module | None = None, **kwargs):
    return extraction.ActivationExtractor(model or c.model, layer, progress=False, **kwargs)


def _fresh_store(c, name: str) -> Path:
    path = c.root / name
    shutil.rmtree(path, ignore_errors=True)
    extraction.write_store(_extractor(c), c.images, path, chunk_size=4, progress=False)
    return path


def _stale(c, name: str, **change) -> Any:
    """Write a store, then rerun another extraction into it (``change`` says which)."""
    path = _fresh_store(c, f"stale-{name}")
    extractor = change.pop("extractor", None) or _extractor(c)
    images = change.pop("images", c.images)
    return extraction.write_store(extractor, images, path, progress=False,
                                  **{"chunk_size": 4, **change})


def _double_model(c):
    return copy.deepcopy(c.model).double()


def _other_weights(c):
    model = copy.deepcopy(c.model)
    with torch.no_grad():
        model.block1[0].weight.add_(0.01)  # one layer's weights nudged
    return model


def _edited_store(c, name: str, edit: Callable[[dict], None], sign: bool = True) -> Path:
    path = _fresh_store(c, f"edited-{name}")
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    if sign:
        manifest["digest"] = manifest_digest(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _swap(m):
    m["chunks"][0], m["chunks"][1] = m["chunks"][1], m["chunks"][0]


def _repeat(m):
    m["chunks"][1] = dict(m["chunks"][0])


def _duplicate(m):
    m["chunks"].insert(1, dict(m["chunks"][0]))
    m["n_chunks"] += 1


def _positions_over_pooled(m):
    m["layout"] = "positions"
    m["chunks"][-1]["rows"] = 3  # 2 inputs in the last chunk cannot have 3 positions each


def _symlinked_chunk(c) -> Path:
    path = _fresh_store(c, "symlinked-chunk")
    outside = c.root / "outside-chunk.npy"
    os.replace(path / "chunk-000001.npy", outside)
    (path / "chunk-000001.npy").symlink_to(outside)
    return path


def _symlinked_manifest(c) -> Path:
    path = _fresh_store(c, "symlinked-manifest")
    outside = c.root / "outside-manifest.json"
    os.replace(path / "manifest.json", outside)
    (path / "manifest.json").symlink_to(outside)
    return path


def _raw_manifest(c, name: str, text: str) -> Path:
    path = _fresh_store(c, f"raw-{name}")
    (path / "manifest.json").write_text(text)
    return path


def _orphan_chunks(c) -> Any:
    path = _fresh_store(c, "orphans")
    (path / "manifest.json").unlink()
    return extraction.write_store(_extractor(c), c.images, path, chunk_size=4, progress=False)


def _file_not_dir(c) -> Path:
    path = c.root / "a-file"
    path.write_text("notes")
    return path


@contextlib.contextmanager
def _full_disk():
    """Every fsync fails as on a full disk (after part of the data was written)."""
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    os.fsync = full
    try:
        yield
    finally:
        os.fsync = real


def _store_full_disk(c):
    path = c.root / "full-store"
    shutil.rmtree(path, ignore_errors=True)
    with _full_disk():
        return extraction.write_store(_extractor(c), c.images, path, chunk_size=4, progress=False)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def _scripted(c):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        return torch.jit.script(c.model)


def _traced(c):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(c.model, c.images[:1])


def _reused_relu():
    relu = nn.ReLU()
    return nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3), relu,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


class _Outputs(nn.Module):
    """The table's model, returning a dict or a tuple."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.net, self.kind = model, kind

    def forward(self, x):
        logits = self.net(x)
        return {"logits": logits, "aux": logits.sum(1)} if self.kind == "dict" else (logits, logits.sum(1))


def _deep_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2)).eval()


def _explain(model, layer, images, **kwargs):
    return conceptkit.ConceptExplainer(model, layer, n_concepts=2, method="ice", progress=False,
                                       **kwargs).fit(images, 0)


def _dict_head(c):
    _, h = extraction.split_model(_Outputs(c.model, "dict"), "net.block2")
    return importance.concept_importance(h, c.activations, c.bank, 0, n_designs=4, progress=False)


# ---------------------------------------------------------------------------------------------
# Saved files
# ---------------------------------------------------------------------------------------------

def _forged(c, source: Path, name: str, edit, sign: bool = True) -> Path:
    return forge(source, c.root / f"forged-{name}.safetensors", edit, sign=sign)


def _encoder(info, tensors):
    info["meta"]["encoder"] = {"type": "linear", "in_features": 50000, "out_features": 40000,
                               "bias": True}




def _mlp_head(hidden: int):
    """Declare the linear head of a CBM file an MLP head of width ``hidden``."""
    def edit(info, tensors):
        info["meta"]["config"].update(head="mlp", hidden=hidden)
    return edit


def _scale_tensor(name: str):
    def edit(info, tensors):
        tensors[name] = tensors[name] * 1.5
    return edit


def _deep_json(c, source: Path) -> Path:
    return raw_metadata(source, c.root / "deep.safetensors", "[" * 100_000 + "]" * 100_000)


def _digits(c, source: Path) -> Path:
    return raw_metadata(source, c.root / "digits.safetensors",
                        '{"format": "conceptkit", "kind": "ConceptBank", "format_version": '
                        + "7" * 5000 + "}")


def _deep_header(c) -> Path:
    import struct

    text = ('{"__metadata__": {"x": "y"}, "a": ' + "[" * 50_000 + "]" * 50_000 + "}").encode()
    target = c.root / "deep-header.safetensors"
    target.write_bytes(struct.pack("<Q", len(text)) + text)
    return target


def _maps_k(info, tensors):
    tensors["maps"] = torch.zeros(tensors["maps"].shape[0], 7, *tensors["maps"].shape[2:],
                                  dtype=torch.float16)


def _short_ci(info, tensors):
    tensors["importance.ci_low"] = tensors["importance.ci_low"][:1].clone()


def _short_ids(info, tensors):
    info["meta"]["exemplar_ids"][0] = info["meta"]["exemplar_ids"][0][:1]


def _fewer_maps(info, tensors):
    tensors["maps"] = tensors["maps"][:1].clone()


def _drop_exemplars(info, tensors):
    del tensors["exemplars.1"]


def _posthoc_file(c) -> Path:
    cav_bank = bottleneck.ConceptBank(np.eye(5)[:3] + 0.1, np.zeros(3), ["a", "b", "c"])
    rng = np.random.default_rng(0)
    model = bottleneck.PosthocCBM(cav_bank, max_iter=20, progress=False).fit(
        rng.normal(size=(30, 5)), np.arange(30) % 3)
    return Path(model.save(c.root / "posthoc.safetensors"))


class _Backbone(nn.Module):
    def forward(self, x):
        return x.mean((2, 3)).repeat(1, 2)[:, :5]


def _label_free_model() -> bottleneck.LabelFreeCBM:
    model = bottleneck.LabelFreeCBM(_Backbone(), None, ["red", "round"], ["a", "b"], progress=False)
    gen = torch.Generator().manual_seed(0)
    model.concepts_, model.removed_ = ["red", "round"], {}
    model.projection_ = torch.randn(2, 5, generator=gen)
    model.proj_mean_, model.proj_std_ = torch.zeros(2), torch.ones(2)
    model.concept_similarity_ = torch.tensor([0.6, 0.7])
    model.weight_, model.bias_ = torch.randn(2, 2, generator=gen), torch.zeros(2)
    model.alpha_, model.path_, model.val_accuracy_, model.proj_steps_ = 0.01, [], 0.5, 10
    model.classes_ = ["a", "b"]
    return model


# ---------------------------------------------------------------------------------------------
# Files on disk
# ---------------------------------------------------------------------------------------------

def _read_only_file(c, name: str) -> Path:
    path = c.root / name
    if path.exists():
        path.chmod(0o644)
    path.write_bytes(b"keep me")
    path.chmod(0o444)
    return path


def _read_only_dir_save(c, save: Callable[[Path], Any]) -> Any:
    folder = c.root / "locked"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):  # root writes anyway: refuse as the system would
        if dir is not None and os.path.samefile(dir, folder):
            raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, "x.tmp"))
        return real(*args, dir=dir, **kwargs)

    if IS_ROOT:
        tempfile.mkstemp = refuse
    try:
        return save(folder / "saved.safetensors")
    finally:
        tempfile.mkstemp = real
        folder.chmod(0o755)


def _loop(c) -> Path:
    a, b = c.root / "loop-a.safetensors", c.root / "loop-b.safetensors"
    for link, target in ((a, b), (b, a)):
        if not link.is_symlink():
            link.symlink_to(target)
    return a


def _full_disk_save(save: Callable[[], Any]) -> Any:
    with _full_disk():
        return save()


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def _images_folder(c) -> Path:
    from PIL import Image

    folder = c.root / "cli-images"
    if not folder.exists():
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(2):
            pixels = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def _explain_args(c, *extra) -> list[str]:
    return ["explain", "--model", "reference", "--images", str(_images_folder(c)), "--class", "0",
            "--out", str(c.root / "cli-out"), "--quiet", *extra]


def _extract_args(c, out: Path, *extra) -> list[str]:
    return ["extract", "--model", "reference", "--layer", "block3", "--concept-dataset", "1",
            "--chunk-size", "4", "--quiet", "--out", str(out), *extra]


def _bomb(c, cli):
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100  # the 40x40 test images count as decompression bombs
    try:
        return cli(*_explain_args(c))
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _cli_stale(c, cli):
    out = c.root / "cli-store"
    shutil.rmtree(out, ignore_errors=True)
    from conceptkit.cli import main

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        assert main(_extract_args(c, out)) == 0
    return cli(*_extract_args(c, out, "--layer", "block4"))


# ---------------------------------------------------------------------------------------------
# The rows
# ---------------------------------------------------------------------------------------------

def rows(R: Callable[..., Any], cli: Callable[..., Any], CLIError: type) -> list[Any]:  # noqa: N803
    FE = io.FormatError
    ws = "extraction.write_store"
    AS = "extraction.ActivationStore"
    return [
        # -- stores that cannot go stale (class 1) ------------------------------------------------
        R("store-stale-layer", ws, "a rerun into a store of another layer",
          lambda c: _stale(c, "layer", extractor=_extractor(c, "block1")), ValueError, "overwrite=True"),
        R("store-stale-inputs", ws, "a rerun into a store of other inputs",
          lambda c: _stale(c, "inputs", images=c.images.flip(0)), ValueError, "overwrite=True"),
        R("store-stale-n", ws, "a rerun into a store of another number of inputs",
          lambda c: _stale(c, "n", images=c.images[:5]), ValueError, "overwrite=True"),
        R("store-stale-chunk-size", ws, "a rerun with another chunk size",
          lambda c: _stale(c, "chunk-size", chunk_size=3), ValueError, "overwrite=True"),
        R("store-stale-layout", ws, "a rerun with another layout",
          lambda c: _stale(c, "layout", layout="positions"), ValueError, "overwrite=True"),
        R("store-stale-weights", ws, "a rerun with other model weights",
          lambda c: _stale(c, "weights", extractor=_extractor(c, model=_other_weights(c))),
          ValueError, "overwrite=True"),
        R("store-stale-preprocess", ws, "a rerun with other preprocessing",
          lambda c: _stale(c, "preprocess", extractor=_extractor(c, preprocess=lambda x: x * 2)),
          ValueError, "overwrite=True"),
        R("store-stale-dtype", ws, "a rerun with the model in another dtype",
          lambda c: _stale(c, "dtype", extractor=_extractor(c, model=_double_model(c))),
          ValueError, "overwrite=True"),
        R("store-orphan-chunks", ws, "chunk files without a manifest (origin unknown)",
          _orphan_chunks, ValueError, "overwrite=True"),
        R("store-path-is-file", ws, "a store path that is a file",
          lambda c: extraction.write_store(_extractor(c), c.images, _file_not_dir(c), progress=False),
          NotADirectoryError, "`path`"),
        R("store-fingerprint-type", "extraction._store.write_chunks", "a fingerprint that is not a dict",
          lambda c: write_chunks(lambda s, e: torch.ones(e - s, 2), 4, c.root / "fp",
                                            fingerprint=["model"], progress=False),
          TypeError, "`fingerprint`"),
        R("store-swapped-chunks", AS, "a manifest with two chunk entries swapped",
          lambda c: extraction.ActivationStore(_edited_store(c, "swapped", _swap)), FE, "`path`"),
        R("store-repeated-chunk", AS, "a manifest listing one chunk twice",
          lambda c: extraction.ActivationStore(_edited_store(c, "repeated", _repeat)), FE, "`path`"),
        R("store-duplicated-chunk", AS, "a manifest with a duplicated chunk entry",
          lambda c: extraction.ActivationStore(_edited_store(c, "duplicated", _duplicate)), FE, "`path`"),
        R("store-layout-rows", AS, "a manifest saying `positions` over pooled rows",
          lambda c: extraction.ActivationStore(_edited_store(c, "layout", _positions_over_pooled)),
          FE, "`path`"),
        R("store-manifest-dtype", "extraction.ActivationStore.read", "a manifest dtype other than the chunks'",
          lambda c: extraction.ActivationStore(_edited_store(c, "dtype", lambda m: m.update(dtype="float64"))).read(),
          FE, "`path`"),
        R("store-manifest-edited", AS, "a manifest edited after it was written (digest)",
          lambda c: extraction.ActivationStore(_edited_store(
              c, "unsigned", lambda m: m["meta"].update(note="x"), sign=False)), FE, "`path`"),
        R("store-symlinked-chunk", AS, "a chunk that is a symbolic link",
          lambda c: extraction.ActivationStore(_symlinked_chunk(c)), FE, "`path`"),
        R("store-symlinked-manifest", AS, "a manifest that is a symbolic link",
          lambda c: extraction.ActivationStore(_symlinked_manifest(c)), FE, "`path`"),
        R("store-manifest-deep", AS, "a manifest nested 100,000 levels deep",
          lambda c: extraction.ActivationStore(_raw_manifest(c, "deep", "[" * 100_000 + "]" * 100_000)),
          FE, "`path`"),
        R("store-manifest-digits", AS, "a manifest holding a 5,000-digit integer",
          lambda c: extraction.ActivationStore(_raw_manifest(c, "digits", '{"n_inputs": ' + "9" * 5000 + "}")),
          FE, "`path`"),
        R("store-full-disk", ws, "a full disk (ENOSPC) while writing a chunk",
          _store_full_disk, OSError, "activation store"),
        # -- wrapped and untraceable models (class 3) ---------------------------------------------
        R("split-torchscript", "extraction.split_model", "a TorchScript (torch.jit.script) model",
          lambda c: extraction.split_model(_scripted(c), "block2"), TypeError, "`model`"),
        R("extract-traced", "extraction.ActivationExtractor", "a traced (torch.jit.trace) model",
          lambda c: extraction.ActivationExtractor(_traced(c), "block2"), TypeError, "`model`"),
        R("explainer-torchscript", "ConceptExplainer", "a TorchScript model",
          lambda c: conceptkit.ConceptExplainer(_scripted(c), "block2"), TypeError, "`model`"),
        R("split-used-twice", "extraction.split_model", "a module used at two places of a Sequential",
          lambda c: extraction.split_model(_reused_relu(), "3"), ValueError, "used twice"),
        R("extract-used-twice", "extraction.ActivationExtractor", "a layer object used twice",
          lambda c: extraction.ActivationExtractor(_reused_relu(), "1"), ValueError, "used twice"),
        R("wrapped-unknown-layer", "extraction.split_model", "a DataParallel model and a typo in the layer",
          lambda c: extraction.split_model(nn.DataParallel(c.model), "module.blok2"), ValueError, "`layer`"),
        # -- hostile files within bounds (class 4) --------------------------------------------------
        R("cbm-load-huge-encoder", "bottleneck.ConceptBottleneckModel.load",
          "a 1 KB file declaring a 50000x40000 encoder",
          lambda c: bottleneck.ConceptBottleneckModel.load(_forged(c, c.cbm_file, "encoder", _encoder)),
          FE, "`path`"),
        R("cbm-load-huge-width", "bottleneck.ConceptBottleneckModel.load", "n_concepts=10**9 declared",
          lambda c: bottleneck.ConceptBottleneckModel.load(
              _forged(c, c.cbm_file, "width", set_meta("config", "n_concepts", value=10**9))), FE, "`path`"),
        R("cbm-load-hidden", "bottleneck.ConceptBottleneckModel.load", "a head declared wider than stored",
          lambda c: bottleneck.ConceptBottleneckModel.load(
              _forged(c, c.cbm_file, "hidden", _mlp_head(64))), FE, "`path`"),
        R("cbm-load-altered", "bottleneck.ConceptBottleneckModel.load", "weights altered after saving",
          lambda c: bottleneck.ConceptBottleneckModel.load(
              _forged(c, c.cbm_file, "cbm-altered", _scale_tensor("head.weight"), sign=False)),
          FE, "`path`"),
        R("bank-load-deep-json", "concepts.ConceptBank.load", "metadata nested 100,000 levels deep",
          lambda c: concepts.ConceptBank.load(_deep_json(c, c.bank_file)), FE, "`path`"),
        R("bank-load-digits", "concepts.ConceptBank.load", "metadata holding a 5,000-digit integer",
          lambda c: concepts.ConceptBank.load(_digits(c, c.bank_file)), FE, "`path`"),
        R("load-deep-header", "conceptkit.load", "a safetensors header nested 50,000 levels deep",
          lambda c: conceptkit.load(_deep_header(c)), FE, "`path`"),
        R("bank-load-altered", "concepts.ConceptBank.load", "components altered after saving",
          lambda c: concepts.ConceptBank.load(
              _forged(c, c.bank_file, "bank-altered", _scale_tensor("components"), sign=False)),
          FE, "`path`"),
        R("bank-load-source-size", "concepts.ConceptBank.load", "provenance declaring 10**9-pixel images",
          lambda c: concepts.ConceptBank.load(
              _forged(c, c.bank_file, "source-size", set_meta("provenance", "source_size", value=[10**9, 10**9]))),
          FE, "`path`"),
        R("bank-load-factorizer-k", "concepts.ConceptBank.load", "a factorizer declaring another k",
          lambda c: concepts.ConceptBank.load(
              _forged(c, c.bank_file, "factorizer-k", set_meta("factorizer", "params", "n_concepts", value=7))),
          FE, "`path`"),
        R("explanation-load-maps-k", "conceptkit.load", "maps for k=7 concepts in a k=3 explanation",
          lambda c: conceptkit.load(_forged(c, c.explanation_file, "maps-k", _maps_k)), FE, "`path`"),
        R("explanation-load-ci", "conceptkit.load", "a confidence interval of the wrong length",
          lambda c: conceptkit.load(_forged(c, c.explanation_file, "ci", _short_ci)), FE, "`path`"),
        R("explanation-load-exemplar-ids", "conceptkit.load", "exemplars without their ids",
          lambda c: conceptkit.load(_forged(c, c.explanation_file, "ids", _short_ids)), FE, "`path`"),
        R("explanation-load-maps-images", "conceptkit.load", "maps for fewer images than saved",
          lambda c: conceptkit.load(_forged(c, c.explanation_file, "fewer-maps", _fewer_maps)), FE, "`path`"),
        R("explanation-load-some-exemplars", "conceptkit.load", "exemplars of some concepts only",
          lambda c: conceptkit.load(_forged(c, c.explanation_file, "some", _drop_exemplars)), FE, "`path`"),
        R("posthoc-load-altered", "bottleneck.PosthocCBM.load", "coefficients altered after saving",
          lambda c: bottleneck.PosthocCBM.load(
              _forged(c, _posthoc_file(c), "posthoc-altered", _scale_tensor("coef"), sign=False)),
          FE, "`path`"),
        R("label-free-load-altered", "bottleneck.LabelFreeCBM.load", "weights altered after saving",
          lambda c: bottleneck.LabelFreeCBM.load(_forged(
              c, Path(_label_free_model().save(c.root / "lf.safetensors")), "lf-altered",
              _scale_tensor("weight"), sign=False), _Backbone()), FE, "`path`"),
        # -- numbers at the edges (class 5) ---------------------------------------------------------
        R("nmf-huge-regularised", "concepts.NMF.fit", "an entry of 1e30 with a penalty (alpha_W)",
          lambda c: concepts.NMF(2, alpha_W=0.1).fit(
              np.vstack([np.ones((3, 4)), [[1e30, 1, 1, 1]]]).astype(np.float32)),
          ValueError, "`A`"),
        R("seminmf-beyond-dtype", "concepts.SemiNMF.fit", "1e200 for a float32 solver",
          lambda c: concepts.SemiNMF(2).fit(np.vstack([np.ones((3, 4)), [[1e200, 1, 1, 1]]])),
          ValueError, "`A`"),
        R("nmf-transform-beyond-dtype", "concepts.NMF.transform", "1e200 for a float32 torch solver",
          lambda c: concepts.NMF(2, solver="torch_hals", random_state=0).fit(np.ones((4, 4)) + np.eye(4))
          .transform(np.full((2, 4), 1e200)), ValueError, "`A`"),
        # -- inputs and models (class 6) ------------------------------------------------------------
        R("explainer-images-1px", "ConceptExplainer.fit", "1x1 images",
          lambda c: _explain(_deep_model(), "0", torch.rand(3, 3, 1, 1)), ValueError, "`images`"),
        R("explainer-images-too-small", "ConceptExplainer.fit", "7x7 images for a model needing 12x12",
          lambda c: _explain(_deep_model(), "0", torch.rand(3, 3, 7, 7)), ValueError, "`images`"),
        R("extract-images-too-small", "extraction.ActivationExtractor", "1x1 images",
          lambda c: extraction.ActivationExtractor(_deep_model(), "3", progress=False)(
              torch.rand(2, 3, 1, 1)), ValueError, "`inputs`"),
        R("split-example-too-small", "extraction.split_model", "an example input too small for the model",
          lambda c: extraction.split_model(_deep_model(), "0", example_input=torch.rand(2, 3, 7, 7)),
          ValueError, "`example_input`"),
        R("explainer-dict-output", "ConceptExplainer.fit", "a model returning a dict",
          lambda c: _explain(_Outputs(c.model, "dict"), "net.block2", c.images), ValueError, "`output`"),
        R("explainer-tuple-output", "ConceptExplainer.fit", "a model returning a tuple",
          lambda c: _explain(_Outputs(c.model, "tuple"), "net.block2", c.images), ValueError, "`output`"),
        R("explainer-output-key", "ConceptExplainer.fit", "an output key the model does not return",
          lambda c: _explain(_Outputs(c.model, "dict"), "net.block2", c.images, output="scores"),
          ValueError, "`output`"),
        R("explainer-output-type", "ConceptExplainer", "output=1.5 (neither index nor key)",
          lambda c: conceptkit.ConceptExplainer(c.model, "block2", output=1.5), TypeError, "`output`"),
        R("select-output-type", "extraction.select_output", "a key that is neither int nor str",
          lambda c: extraction.select_output(c.model, [0]), TypeError, "`output`"),
        R("importance-dict-head", "importance.concept_importance", "a head `h` returning a dict",
          _dict_head, ValueError, "`h`"),
        R("encode-meta", "concepts.ConceptBank.encode", "activations on the meta device",
          lambda c: c.bank.encode(torch.empty(2, c.bank.n_features, 4, 4, device="meta")),
          ValueError, "`activations`"),
        R("importance-meta", "importance.concept_importance", "activations on the meta device",
          lambda c: importance.concept_importance(c.split[1], torch.empty(2, 12, 4, 4, device="meta"),
                                                  c.bank, 0, progress=False), ValueError, "`activations`"),
        R("transform-meta", "concepts.NMF.transform", "activations on the meta device",
          lambda c: c.nmf.transform(torch.empty(2, 6, device="meta")), ValueError, "`A`"),
        # -- the command line (class 7) -------------------------------------------------------------
        R("cli-extract-chunk-size", "conceptkit extract (CLI)", "--chunk-size 0",
          lambda c: cli(*_extract_args(c, c.root / "s", "--chunk-size", "0")), CLIError, "`--chunk-size`"),
        R("cli-extract-size", "conceptkit extract (CLI)", "--size 0",
          lambda c: cli(*_extract_args(c, c.root / "s", "--size", "0")), CLIError, "`--size`"),
        R("cli-explain-size", "conceptkit explain (CLI)", "--size 0 (not the default)",
          lambda c: cli(*_explain_args(c, "--size", "0")), CLIError, "`--size`"),
        R("cli-explain-n-concepts", "conceptkit explain (CLI)", "--n-concepts 0",
          lambda c: cli(*_explain_args(c, "--n-concepts", "0")), CLIError, "`--n-concepts`"),
        R("cli-demo-n-per-class", "conceptkit demo (CLI)", "--n-per-class 0",
          lambda c: cli("demo", "--n-per-class", "0", "--out", str(c.root / "d")), CLIError,
          "`--n-per-class`"),
        R("cli-train-cbm-epochs", "conceptkit train-cbm (CLI)", "--epochs 0",
          lambda c: cli("train-cbm", "--epochs", "0", "--out", str(c.root / "t")), CLIError, "`--epochs`"),
        R("cli-explain-out-file", "conceptkit explain (CLI)", "--out that is a file",
          lambda c: cli(*_explain_args(c)[:-3], "--out", str(_file_not_dir(c))), CLIError, "`--out`"),
        R("cli-report-out-file", "conceptkit report (CLI)", "--out that is a file",
          lambda c: cli("report", str(c.explanation_file), "--out", str(_file_not_dir(c))),
          CLIError, "`--out`"),
        R("cli-extract-out-file", "conceptkit extract (CLI)", "--out that is a file",
          lambda c: cli(*_extract_args(c, _file_not_dir(c))), CLIError, "`--out`"),
        R("cli-train-cbm-out-file", "conceptkit train-cbm (CLI)", "--out that is a file",
          lambda c: cli("train-cbm", "--out", str(_file_not_dir(c))), CLIError, "`--out`"),
        R("cli-decompression-bomb", "conceptkit explain (CLI)", "an image above PIL's pixel limit",
          lambda c: _bomb(c, cli), CLIError, "`--images`"),
        R("cli-extract-stale", "conceptkit extract (CLI)", "a rerun at another layer without --overwrite",
          lambda c: _cli_stale(c, cli), CLIError, "--overwrite"),
        R("cli-extract-layer", "conceptkit extract (CLI)", "an unknown --layer (was a traceback)",
          lambda c: cli(*_extract_args(c, c.root / "s2", "--layer", "block9")), CLIError, "`--layer`"),
        R("cli-extract-no-inputs", "conceptkit extract (CLI)", "neither --images nor --concept-dataset",
          lambda c: cli("extract", "--model", "reference", "--out", str(c.root / "s3")), CLIError,
          "`--images"),
        R("cli-report-bank", "conceptkit report (CLI)", "a concept bank file instead of an explanation",
          lambda c: cli("report", str(c.bank_file), "--out", str(c.root / "r2")), CLIError, "`path`"),
        # -- files on disk (class 8) ----------------------------------------------------------------
        R("save-read-only", "concepts.ConceptBank.save", "a read-only file at the destination",
          lambda c: c.bank.save(_read_only_file(c, "read-only.safetensors")), PermissionError, "`path`"),
        R("cbm-save-read-only", "bottleneck.ConceptBottleneckModel.save", "a read-only file at the destination",
          lambda c: c.cbm.save(_read_only_file(c, "read-only-cbm.safetensors")), PermissionError, "`path`"),
        R("save-read-only-dir", "bottleneck.ConceptBottleneckModel.save", "a read-only directory",
          lambda c: _read_only_dir_save(c, c.cbm.save), PermissionError, "`path`"),
        R("save-full-disk", "concepts.ConceptBank.save", "a full disk (ENOSPC)",
          lambda c: _full_disk_save(lambda: c.bank.save(c.root / "full.safetensors")), OSError, "`path`"),
        R("explanation-save-full-disk", "ClassConcepts.save", "a full disk (ENOSPC)",
          lambda c: _full_disk_save(lambda: c.explanation.save(c.root / "full-e.safetensors")),
          OSError, "`path`"),
        R("save-symlink-loop", "concepts.ConceptBank.save", "a destination that is a symlink loop",
          lambda c: c.bank.save(_loop(c)), OSError, "`path`"),
        R("load-symlink-loop", "conceptkit.load", "a path that is a symlink loop",
          lambda c: conceptkit.load(_loop(c)), OSError, "`path`"),
        R("save-bytes-path", "concepts.ConceptBank.save", "a bytes path",
          lambda c: c.bank.save(os.fsencode(c.root / "b.safetensors")), TypeError, "`path`"),
        R("load-bytes-path", "conceptkit.load", "a bytes path",
          lambda c: conceptkit.load(os.fsencode(c.bank_file)), TypeError, "`path`"),
    ]
