"""The bad-input matrix: one table of bad inputs across the public entry points.

Every row is a call that must fail with a clear error: the expected exception type, a message
that names the argument at fault, and an exception raised by conceptkit's own code (never a
traceback that ends inside torch, scikit-learn or scipy). The same table is what
``docs/errors.md`` shows; ``test_doc_lists_every_row`` checks that the page is in sync, and

    python tests/contracts/test_errors.py

rewrites the page from the table (run it after changing a row or a message).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import conceptkit
from conceptkit import bottleneck, concepts, extraction, importance, io, maps, naming, pipeline
from conceptkit import evaluate as ev
from conceptkit.concepts import metrics as concept_metrics
from conceptkit.datasets import make_concept_dataset

PACKAGE_DIR = Path(conceptkit.__file__).resolve().parent
DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------------------------------------
# Small fixtures shared by the rows (built once, lazily)
# ---------------------------------------------------------------------------------------------

def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("block1", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()))
    model.add_module("block2", nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU()))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(12, 3))
    return model.eval()


class SkipNet(nn.Module):
    """A residual connection crosses ``body``: the model cannot be cut there."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.body(x) + x)


class Context:
    """Everything the rows need; each piece is built on first use."""

    def __init__(self, root: Path):
        self.root = root

    @functools.cached_property
    def model(self) -> nn.Sequential:
        return small_cnn()

    @functools.cached_property
    def images(self) -> torch.Tensor:
        return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    @functools.cached_property
    def activations(self) -> torch.Tensor:
        return extraction.ActivationExtractor(self.model, "block2", progress=False)(self.images)

    @functools.cached_property
    def bank(self) -> concepts.ConceptBank:
        return concepts.CRAFT(3, patch_size=16, seed=0, progress=False).fit(
            self.model, "block2", self.images)

    @functools.cached_property
    def split(self):
        return extraction.split_model(self.model, "block2")

    @functools.cached_property
    def explanation(self) -> conceptkit.ClassConcepts:
        return conceptkit.ConceptExplainer(self.model, "block2", n_concepts=3, method="ice", seed=0,
                                           progress=False).fit(self.images, 1)

    @functools.cached_property
    def part_masks(self) -> torch.Tensor:
        """Two parts per image: the top-left and the bottom-right corner, (6, 2, 32, 32)."""
        masks = torch.zeros(6, 2, 32, 32, dtype=torch.bool)
        masks[:, 0, :10, :10] = True
        masks[:, 1, 20:, 20:] = True
        return masks

    def part_data(self, **fields) -> dict:
        """A (model, data) world for ``evaluate``: images, labels 0, 1, 2, part masks."""
        data = {"images": self.images, "labels": np.arange(6) % 3, "masks": self.part_masks}
        data.update(fields)
        return {k: v for k, v in data.items() if v is not None}

    @functools.cached_property
    def nmf(self) -> concepts.NMF:
        return concepts.NMF(3, random_state=0).fit(np.abs(np.random.default_rng(0).normal(size=(20, 6))))

    @functools.cached_property
    def bank_file(self) -> Path:
        return Path(self.bank.save(self.root / "bank.safetensors"))

    @functools.cached_property
    def explanation_file(self) -> Path:
        return Path(self.explanation.save(self.root / "explanation.safetensors"))

    @functools.cached_property
    def cbm(self) -> bottleneck.ConceptBottleneckModel:
        torch.manual_seed(0)
        return bottleneck.ConceptBottleneckModel(nn.Linear(8, 4), 4, 3).eval()

    @functools.cached_property
    def cbm_data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(40, 8, generator=gen)
        c = (torch.rand(40, 4, generator=gen) > 0.5).float()
        y = torch.arange(40) % 3
        return x, c, y

    @functools.cached_property
    def cbm_file(self) -> Path:
        return Path(self.cbm.save(self.root / "cbm.safetensors"))

    def bank_file_with_version(self, version: int) -> Path:
        tensors, meta = self.bank.to_state()
        return io.save_file(self.root / f"bank-v{version}.safetensors", tensors, meta,
                            kind="ConceptBank", version=version)

    def truncated(self, source: Path, keep: float = 0.6) -> Path:
        data = source.read_bytes()
        target = self.root / f"truncated-{source.name}"
        target.write_bytes(data[:int(len(data) * keep)])
        return target

    def load_unreadable(self, loader: Callable[[Path], Any]) -> Any:
        """Load a file with mode 000. Root reads it anyway, so for root the operating system's
        refusal is simulated where conceptkit opens the file (the same PermissionError)."""
        target = self.root / "unreadable.safetensors"
        shutil.copy(self.bank_file, target)
        target.chmod(0)
        if not IS_ROOT:
            return loader(target)

        def refuse(file, *args, **kwargs):
            if Path(file) == target:
                raise PermissionError(13, "Permission denied", str(file))
            return open(file, *args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(io, "open", refuse, raising=False)
            return loader(target)

    def store(self) -> Path:
        path = self.root / "store"
        if not (path / "manifest.json").exists():
            extractor = extraction.ActivationExtractor(self.model, "block2", progress=False)
            extraction.write_store(extractor, self.images, path, chunk_size=4, progress=False)
        return path

    def store_with_pickled_chunk(self) -> Path:
        path = self.root / "store-pickle"
        if not path.exists():
            shutil.copytree(self.store(), path)
            np.save(path / "chunk-000000.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return path

    def store_with_manifest_escape(self) -> Path:
        import json

        from conceptkit.extraction._store import manifest_digest

        path = self.root / "store-escape"
        if not path.exists():
            shutil.copytree(self.store(), path)
            manifest = json.loads((path / "manifest.json").read_text())
            manifest["chunks"][0]["file"] = f"../{self.bank_file.name}"  # an existing file
            manifest["digest"] = manifest_digest(manifest)  # a forged, consistent digest
            (path / "manifest.json").write_text(json.dumps(manifest))
        return path

    def label_free_file(self) -> Path:
        # the header of a saved LabelFreeCBM; conceptkit.load refuses it before reading tensors
        return io.save_file(self.root / "label-free.safetensors", {"weight": torch.ones(3, 2)},
                            {"params": {}}, kind="label_free_cbm", version=1)

    def image_folder(self, name: str, files: dict[str, bytes]) -> Path:
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        for file, data in files.items():
            (folder / file).write_bytes(data)
        return folder


def cli(*argv: str) -> None:
    """Run the command line in-process; a user error must exit with code 2 and say "error:"."""
    from contextlib import redirect_stderr
    from io import StringIO

    from conceptkit.cli import main

    err = StringIO()
    with redirect_stderr(err):
        code = main(list(argv))
    text = err.getvalue().strip()
    if code == 2 and text.startswith("error:"):
        raise CLIError(text)
    raise AssertionError(f"the CLI returned {code} with stderr {text!r}")


class CLIError(Exception):
    """What a user sees from the command line: exit code 2 and an ``error: ...`` line."""


def meta_images() -> torch.Tensor:
    return torch.empty(2, 3, 32, 32, device="meta")


def float_images(n: int = 2, channels: int = 3, size: int = 32, fill: float | None = None):
    images = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(1))
    if fill is not None:
        images[0, 0, 0, 0] = fill
    return images


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

def _nan_head(activations: torch.Tensor) -> torch.Tensor:
    return torch.full((activations.shape[0], 3), float("nan"))


def _sqrt_head(activations: torch.Tensor) -> torch.Tensor:
    # the gradient of sqrt at 0 is infinite: masking a concept to 0 gives Inf
    pooled = activations.mean(dim=(2, 3))
    # (the value stays pooled[:, :3], so the head does reach the output)
    return pooled[:, :3] + torch.sqrt(pooled[:, :3] - pooled[:, :3].detach())


@dataclass(frozen=True)
class Row:
    id: str                              # unique, stable: shown in docs/errors.md
    entry: str                           # the public entry point
    bad: str                             # what is wrong with the input
    call: Callable[[Context], Any]       # the bad call
    error: type[BaseException]           # the exception users get
    names: str                           # the argument the message must name
    pending: str = ""                    # a fix that waits for a change in a shared file


R = Row
ROWS: list[Row] = [
    # -- extraction ---------------------------------------------------------------------------
    R("split-unknown-layer", "extraction.split_model", "unknown layer name (a typo)",
      lambda c: extraction.split_model(c.model, "blok2"), ValueError, "`layer`"),
    R("split-not-a-module", "extraction.split_model", "model is not an nn.Module",
      lambda c: extraction.split_model(lambda x: x, "fc"), TypeError, "`model`"),
    R("split-skip-crossing", "extraction.split_model", "a skip connection crosses the layer",
      lambda c: extraction.split_model(SkipNet(), "body"), extraction.CutError, "`layer`"),
    R("extract-rank-3", "extraction.ActivationExtractor", "a single image (C, H, W): wrong rank",
      lambda c: extraction.ActivationExtractor(c.model, "block2", progress=False)(c.images[0]),
      ValueError, "`inputs`"),
    R("extract-channels", "extraction.ActivationExtractor", "1-channel images for an RGB model",
      lambda c: extraction.ActivationExtractor(c.model, "block2", progress=False)(float_images(channels=1)),
      ValueError, "`inputs`"),
    R("extract-uint8", "extraction.ActivationExtractor", "integer (uint8) images",
      lambda c: extraction.ActivationExtractor(c.model, "block2", progress=False)(
          (c.images * 255).to(torch.uint8)), TypeError, "`inputs`"),
    R("extract-nan", "extraction.ActivationExtractor", "NaN in the images",
      lambda c: extraction.ActivationExtractor(c.model, "block2", progress=False)(float_images(fill=float("nan"))),
      ValueError, "`inputs`"),
    R("extract-inf", "extraction.ActivationExtractor", "Inf in the images",
      lambda c: extraction.ActivationExtractor(c.model, "block2", progress=False)(float_images(fill=float("inf"))),
      ValueError, "`inputs`"),
    R("extract-empty", "extraction.ActivationExtractor", "an empty batch (0, 3, H, W)",
      lambda c: extraction.ActivationExtractor(c.model, "block2", progress=False)(torch.zeros(0, 3, 32, 32)),
      ValueError, "`inputs`"),
    R("extract-meta-images", "extraction.ActivationExtractor",
      "images on another device than the model (the data-less `meta` device)",
      lambda c: extraction.ActivationExtractor(c.model, "block2", progress=False)(meta_images()),
      ValueError, "`inputs`"),
    R("extract-meta-model", "extraction.ActivationExtractor",
      "model on another device than the images (a `meta` model without weights)",
      lambda c: extraction.ActivationExtractor(small_cnn().to("meta"), "block2", progress=False)(c.images),
      ValueError, "`model`"),
    R("extract-batch-size", "extraction.ActivationExtractor", "batch_size=0",
      lambda c: extraction.ActivationExtractor(c.model, "block2", batch_size=0), ValueError, "`batch_size`"),
    R("extract-not-images", "extraction.ActivationExtractor", "a list instead of a tensor",
      lambda c: extraction.ActivationExtractor(c.model, "block2", progress=False)([1, 2, 3]),
      TypeError, "`inputs`"),
    R("split-example-input", "extraction.split_model", "example_input with the wrong channel count",
      lambda c: extraction.split_model(c.model, "block2", example_input=float_images(channels=1)),
      ValueError, "`example_input`"),
    R("segments-sigma", "extraction.segments", "a negative smoothing sigma",
      lambda c: extraction.segments(c.images, n_segments=(4,), sigma=-1.0, progress=False),
      ValueError, "`sigma`"),
    R("segments-compactness", "extraction.segments", "a negative compactness",
      lambda c: extraction.segments(c.images, n_segments=(4,), compactness=-1.0, progress=False),
      ValueError, "`compactness`"),
    R("crops-patch-too-big", "extraction.crops", "patch_size larger than the images",
      lambda c: extraction.crops(c.images, 64), ValueError, "`patch_size`"),
    R("segments-range", "extraction.segments", "images in [0, 255] (SLIC needs [0, 1])",
      lambda c: extraction.segments(c.images * 255, progress=False), ValueError, "`images`"),
    R("segments-channels", "extraction.segments", "grey images (1 channel; SLIC needs RGB)",
      lambda c: extraction.segments(float_images(channels=1), progress=False), ValueError, "`images`"),
    R("positions-rank", "extraction.positions", "pooled vectors (N, C) instead of maps",
      lambda c: extraction.positions(torch.rand(4, 12)), ValueError, "`activations`"),
    R("store-missing", "extraction.ActivationStore", "a path that does not exist",
      lambda c: extraction.ActivationStore(c.root / "no-such-store"), FileNotFoundError, "`path`"),
    R("store-manifest-escape", "extraction.ActivationStore", "a manifest whose chunk points outside the store",
      lambda c: extraction.ActivationStore(c.store_with_manifest_escape()), ValueError, "`path`"),
    R("store-pickled-chunk", "extraction.ActivationStore.read", "a chunk holding a pickled object array",
      lambda c: extraction.ActivationStore(c.store_with_pickled_chunk()).read(), ValueError, "`path`"),
    # -- concepts ----------------------------------------------------------------------------
    R("nmf-negative", "concepts.NMF.fit", "negative activations (suggests TopKSAE / SemiNMF / relu=True)",
      lambda c: concepts.NMF(2).fit(np.random.default_rng(0).normal(size=(10, 4))), ValueError, "`A`"),
    R("nmf-too-many-concepts", "concepts.NMF.fit", "n_concepts larger than the number of rows",
      lambda c: concepts.NMF(8).fit(np.ones((5, 10))), ValueError, "`n_concepts`"),
    R("nmf-nan", "concepts.NMF.fit", "NaN in the activations",
      lambda c: concepts.NMF(2).fit(np.array([[1.0, np.nan], [1.0, 2.0], [0.5, 1.0]])), ValueError, "`A`"),
    R("nmf-rank-1", "concepts.NMF.fit", "a 1-D vector instead of a matrix (n, C)",
      lambda c: concepts.NMF(2).fit(np.ones(10)), ValueError, "`A`"),
    R("nmf-empty", "concepts.NMF.fit", "an empty matrix (0, C)",
      lambda c: concepts.NMF(2).fit(np.ones((0, 4))), ValueError, "`A`"),
    R("nmf-columns", "concepts.NMF.transform", "activations with another channel count than fit",
      lambda c: c.nmf.transform(np.ones((3, 7))), ValueError, "`A`"),
    R("nmf-solver-typo", "concepts.NMF.fit", "unknown solver (a typo)",
      lambda c: concepts.NMF(2, solver="hals").fit(np.ones((5, 4))), ValueError, "`solver`"),
    R("nmf-not-fitted", "concepts.NMF.transform", "transform before fit",
      lambda c: concepts.NMF(2).transform(np.ones((3, 4))), ValueError, "`fit(A)`"),
    R("nmf-complex", "concepts.NMF.fit", "complex activations (the imaginary part would be dropped)",
      lambda c: concepts.NMF(2).fit(np.ones((5, 4)) + 1j), TypeError, "`A`"),
    R("nmf-inverse-codes", "concepts.NMF.inverse_transform", "codes with the wrong number of concepts",
      lambda c: c.nmf.inverse_transform(np.ones((2, 5))), ValueError, "`U`"),
    R("seminmf-inf", "concepts.SemiNMF.fit", "Inf in the activations",
      lambda c: concepts.SemiNMF(2).fit(np.array([[1.0, np.inf], [1.0, 2.0], [0.5, 1.0]])), ValueError, "`A`"),
    R("kmeans-too-many", "concepts.KMeansConcepts.fit", "more clusters than rows",
      lambda c: concepts.KMeansConcepts(9).fit(np.ones((4, 3))), ValueError, "`n_concepts`"),
    R("pca-too-many", "concepts.PCAConcepts.fit", "more concepts than channels",
      lambda c: concepts.PCAConcepts(5).fit(np.ones((10, 3))), ValueError, "`n_concepts`"),
    R("sae-top-k", "concepts.TopKSAE.fit", "top_k larger than n_concepts",
      lambda c: concepts.TopKSAE(4, top_k=8).fit(np.ones((10, 3))), ValueError, "`top_k`"),
    R("ica-integer-seed", "concepts.ICAConcepts.fit", "random_state=-1",
      lambda c: concepts.ICAConcepts(2, random_state=-1).fit(np.ones((10, 3))), ValueError, "`random_state`"),
    R("craft-unknown-layer", "concepts.CRAFT.fit", "unknown layer name",
      lambda c: concepts.CRAFT(3, progress=False).fit(c.model, "block3", c.images), ValueError, "`layer`"),
    R("craft-too-many-concepts", "concepts.CRAFT.fit", "n_concepts larger than the number of crops",
      lambda c: concepts.CRAFT(50, patch_size=16, progress=False).fit(c.model, "block2", c.images[:2]),
      ValueError, "`n_concepts`"),
    R("craft-uint8", "concepts.CRAFT.fit", "integer images",
      lambda c: concepts.CRAFT(3, progress=False).fit(c.model, "block2", (c.images * 255).byte()),
      TypeError, "`images`"),
    R("ice-negative", "concepts.ICE.fit", "a layer with negative activations (no ReLU) for NMF",
      lambda c: concepts.ICE(2, progress=False).fit(c.model, "block2.0", c.images), ValueError, "`layer`"),
    R("craft-negative", "concepts.CRAFT.fit", "a layer with negative activations for NMF",
      lambda c: concepts.CRAFT(2, patch_size=16, progress=False).fit(c.model, "block2.0", c.images),
      ValueError, "`layer`"),
    R("craft-range", "concepts.CRAFT.fit", "images in [0, 255] (one rule with ICE and ACE)",
      lambda c: concepts.CRAFT(3, progress=False).fit(c.model, "block2", c.images * 255),
      ValueError, "`images`"),
    R("ice-normalised", "concepts.ICE.fit", "normalised images (mean/std) instead of [0, 1]",
      lambda c: concepts.ICE(3, progress=False).fit(c.model, "block2", (c.images - 0.45) / 0.22),
      ValueError, "`images`"),
    R("craft-factorizer-k", "concepts.CRAFT", "n_concepts contradicting the factorizer's",
      lambda c: concepts.CRAFT(4, factorizer=concepts.SemiNMF(2), progress=False).fit(
          c.model, "block2", c.images), ValueError, "`n_concepts`"),
    R("ice-vector-layer", "concepts.ICE.fit", "a layer without spatial maps (the classifier)",
      lambda c: concepts.ICE(2, progress=False).fit(c.model, "fc", c.images), ValueError, "`layer`"),
    R("ace-range", "concepts.ACE.fit", "images in [0, 255]",
      lambda c: concepts.ACE(3, progress=False).fit(c.model, "block2", c.images * 255), ValueError, "`images`"),
    R("ace-one-image", "concepts.ACE.fit", "a class with one image",
      lambda c: concepts.ACE(3, n_segments=(4,), progress=False).fit(c.model, "block2", c.images[:1]),
      ValueError, "`images`"),
    R("bank-encode-channels", "concepts.ConceptBank.encode", "activations of another layer (channel count)",
      lambda c: c.bank.encode(torch.rand(2, 5, 4, 4)), ValueError, "`activations`"),
    R("bank-encode-nan", "concepts.ConceptBank.encode", "NaN activations",
      lambda c: c.bank.encode(c.activations * float("nan")), ValueError, "`activations`"),
    R("bank-load-missing", "concepts.ConceptBank.load", "a path that does not exist",
      lambda c: concepts.ConceptBank.load(c.root / "missing.safetensors"), FileNotFoundError, "`path`"),
    R("bank-load-directory", "concepts.ConceptBank.load", "a directory instead of a file",
      lambda c: concepts.ConceptBank.load(c.root), IsADirectoryError, "`path`"),
    R("bank-load-unreadable", "concepts.ConceptBank.load", "an unreadable file (chmod 000)",
      lambda c: c.load_unreadable(concepts.ConceptBank.load), PermissionError, "`path`"),
    R("bank-load-version", "concepts.ConceptBank.load", "a file from another format version",
      lambda c: concepts.ConceptBank.load(c.bank_file_with_version(99)), io.FormatError, "`path`"),
    R("bank-load-truncated", "concepts.ConceptBank.load", "a truncated file",
      lambda c: concepts.ConceptBank.load(c.truncated(c.bank_file)), io.FormatError, "`path`"),
    R("bank-load-other-kind", "concepts.ConceptBank.load", "a file of another kind (a saved CBM)",
      lambda c: concepts.ConceptBank.load(c.cbm_file), io.FormatError, "`path`"),
    R("bank-load-pickle", "concepts.ConceptBank.load", "a torch.save pickle renamed .safetensors",
      lambda c: concepts.ConceptBank.load(_pickle_file(c)), io.FormatError, "`path`"),
    R("metric-shapes", "concepts.metrics.relative_l2", "A and A_hat of different shapes",
      lambda c: concept_metrics.relative_l2(np.ones((4, 3)), np.ones((5, 3))), ValueError, "`A_hat`"),
    R("stability-subset", "concepts.metrics.stability", "a subset smaller than n_concepts",
      lambda c: concept_metrics.stability(concepts.NMF(4), np.ones((6, 5)), subset_fraction=0.3), ValueError, "`subset_fraction`"),
    # -- importance --------------------------------------------------------------------------
    R("sobol-output-shape", "importance.sobol_indices", "func returns (M, 2) instead of (M,)",
      lambda c: importance.sobol_indices(lambda x: np.c_[x[:, 0], x[:, 1]], 2, 64), ValueError, "`func`"),
    R("sobol-nan", "importance.sobol_indices", "func returns NaN",
      lambda c: importance.sobol_indices(lambda x: np.log(x[:, 0] - 0.5), 2, 64), ValueError, "`func`"),
    R("sobol-not-power-of-two", "importance.sobol_indices", "n_designs not a power of two",
      lambda c: importance.sobol_indices(lambda x: x.sum(1), 2, 100), ValueError, "`n_designs`"),
    R("sobol-no-vars", "importance.sobol_indices", "n_vars=0",
      lambda c: importance.sobol_indices(lambda x: x.sum(1), 0), ValueError, "`n_vars`"),
    R("importance-class-range", "importance.concept_importance", "class_id outside the head's outputs",
      lambda c: importance.concept_importance(c.split[1], c.activations, c.bank, 7, progress=False),
      ValueError, "`class_id`"),
    R("importance-channels", "importance.concept_importance", "activations of another layer",
      lambda c: importance.concept_importance(c.split[1], torch.rand(3, 8, 16, 16), c.bank, 0, progress=False),
      ValueError, "`activations`"),
    R("importance-nan", "importance.concept_importance", "NaN activations",
      lambda c: importance.concept_importance(c.split[1], c.activations * float("nan"), c.bank, 0,
                                              progress=False), ValueError, "`activations`"),
    R("importance-empty", "importance.concept_importance", "no activations (0, C, h, w)",
      lambda c: importance.concept_importance(c.split[1], c.activations[:0], c.bank, 0, progress=False),
      ValueError, "`activations`"),
    R("importance-method", "importance.concept_importance", "unknown method",
      lambda c: importance.concept_importance(c.split[1], c.activations, c.bank, 0, method="shap"),
      ValueError, "`method`"),
    R("importance-bad-head", "importance.concept_importance", "h returns a tuple, not logits",
      lambda c: importance.concept_importance(lambda a: (a, a), c.activations, c.bank, 0, progress=False),
      ValueError, "`h`"),
    R("importance-nan-head", "importance.concept_importance", "a head h that returns NaN (Sobol)",
      lambda c: importance.concept_importance(_nan_head, c.activations, c.bank, 0, progress=False),
      ValueError, "`h`"),
    R("importance-nan-head-occlusion", "importance.concept_importance", "a head h that returns NaN (occlusion)",
      lambda c: importance.concept_importance(_nan_head, c.activations, c.bank, 0, method="occlusion",
                                              progress=False), ValueError, "`h`"),
    R("importance-nan-gradient", "importance.concept_importance", "a head whose gradient is NaN",
      lambda c: importance.concept_importance(_sqrt_head, c.activations, c.bank, 0,
                                              method="gradient_input", progress=False), ValueError, "`h`"),
    R("tcav-tiny-concept", "importance.tcav", "a concept set with one example",
      lambda c: importance.tcav(c.split[1], c.activations, {"stripes": c.activations[:1]},
                                torch.rand(20, 12, 16, 16), 0, n_runs=10, progress=False),
      ValueError, "`concepts['stripes']`"),
    R("cav-dims", "importance.compute_cav", "concept and random sets from different layers",
      lambda c: importance.compute_cav(torch.rand(6, 12), torch.rand(6, 8)), ValueError, "`random_activations`"),
    R("tcav-class-range", "importance.tcav", "class_id outside the head's outputs",
      lambda c: importance.tcav(c.split[1], c.activations, {"a": c.activations[:3],
                                                          "b": c.activations[3:6]},
                                torch.rand(20, 12, 16, 16), 9, n_runs=10, progress=False),
      ValueError, "`class_id`"),
    R("tcav-images-uint8", "importance.tcav_images", "integer class images",
      lambda c: importance.tcav_images(c.model, "block2", (c.images * 255).byte(), {"a": c.images},
                                       c.images, 0, progress=False), TypeError, "`class_images`"),
    R("cdeletion-importances", "importance.CDeletion", "importances of the wrong length",
      lambda c: importance.CDeletion()(c.split[1], c.activations, c.bank, 0, np.ones(5)), ValueError, "`importances`"),
    R("cmufidelity-fast-path", "importance.CMuFidelity", "fast_path='yes' (not 'auto', True or False)",
      lambda c: importance.CMuFidelity(fast_path="yes")(c.split[1], c.activations, c.bank, 0,
                                                       np.ones(len(c.bank.components))),
      ValueError, "`fast_path`"),
    # -- maps --------------------------------------------------------------------------------
    R("coefficient-maps-rank", "maps.coefficient_maps", "pooled activations (N, C)",
      lambda c: maps.coefficient_maps(torch.rand(3, 12), c.bank), ValueError, "`activations`"),
    R("coefficient-maps-channels", "maps.coefficient_maps", "feature maps of another layer",
      lambda c: maps.coefficient_maps(torch.rand(3, 8, 4, 4), c.bank), ValueError, "`activations`"),
    R("coefficient-maps-size", "maps.coefficient_maps", "a negative image_size",
      lambda c: maps.coefficient_maps(c.activations, c.bank, image_size=-1), ValueError, "`image_size`"),
    R("coefficient-maps-size-type", "maps.coefficient_maps", "image_size given as a string",
      lambda c: maps.coefficient_maps(c.activations, c.bank, image_size="big"), TypeError, "`image_size`"),
    R("concept-scales-rank", "maps.concept_scales", "codes of one concept as a vector (n,)",
      lambda c: maps.concept_scales(torch.rand(5)), ValueError, "`codes`"),
    R("concept-scales-nan", "maps.concept_scales", "NaN in the codes",
      lambda c: maps.concept_scales(torch.full((4, 3), float("nan"))), ValueError, "`codes`"),
    R("concept-scales-percentile", "maps.concept_scales", "percentile 150 (a percent, 0-100)",
      lambda c: maps.concept_scales(torch.rand(4, 3), percentile=150), ValueError, "`percentile`"),
    R("dominant-maps-scales", "maps.dominant_maps", "scales with a zero",
      lambda c: maps.dominant_maps(c.activations, c.bank, scales=np.zeros(c.bank.n_concepts)),
      ValueError, "`scales`"),
    R("gradient-maps-batch", "maps.gradient_maps", "batch_size=0",
      lambda c: maps.gradient_maps(c.model, c.images, c.bank, batch_size=0), ValueError, "`batch_size`"),
    R("provenance-maps-images", "maps.provenance_maps", "n_images smaller than the bank's source images",
      lambda c: maps.provenance_maps(c.bank, n_images=0), ValueError, "`n_images`"),
    R("pointing-game-nan", "maps.pointing_game", "NaN in the maps",
      lambda c: maps.pointing_game(np.full((2, 8, 8), np.nan), np.ones((2, 8, 8))), ValueError, "`maps`"),
    R("gradient-maps-layer", "maps.gradient_maps", "unknown map_layer",
      lambda c: maps.gradient_maps(c.model, c.images, c.bank, map_layer="block9"), ValueError, "`map_layer`"),
    R("pointing-game-shapes", "maps.pointing_game", "maps and masks of different shapes",
      lambda c: maps.pointing_game(np.ones((2, 8, 8)), np.ones((2, 4, 4))), ValueError, "`masks`"),
    R("mask-iou-quantile", "maps.mask_iou", "quantile outside [0, 1]",
      lambda c: maps.mask_iou(np.ones((2, 8, 8)), np.ones((2, 8, 8)), quantile=1.5), ValueError, "`quantile`"),
    # -- pipeline ----------------------------------------------------------------------------
    R("explainer-unknown-layer", "ConceptExplainer", "unknown layer name (lists close names)",
      lambda c: conceptkit.ConceptExplainer(c.model, "block_2"), ValueError, "`layer`"),
    R("explainer-method", "ConceptExplainer", "unknown method",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", method="crafty"), ValueError, "`method`"),
    R("explainer-no-layer", "ConceptExplainer", "a plain model without `layer` (lists likely layers)",
      lambda c: conceptkit.ConceptExplainer(c.model), ValueError, "`layer`"),
    R("explainer-factorizer-k", "ConceptExplainer", "n_concepts contradicting the factorizer's",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", n_concepts=5,
                                            factorizer=concepts.SemiNMF(3)), ValueError, "`n_concepts`"),
    R("explainer-patch-size", "ConceptExplainer", "a crop size without CRAFT",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", patch_size=16), ValueError,
      "`patch_size`"),
    R("explainer-tokens", "ConceptExplainer", "an unknown `tokens`",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", tokens="class"), ValueError,
      "`tokens`"),
    R("explainer-tokens-method", "ConceptExplainer", "tokens='cls' with CRAFT (ICE only)",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", method="craft", tokens="cls"),
      ValueError, "`tokens`"),
    R("explainer-tokens-importance", "ConceptExplainer", "tokens='cls' with Sobol (pixel ablation only)",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", importance="sobol", tokens="cls"),
      ValueError, "`importance`"),
    R("explainer-window", "ConceptExplainer", "a window with tokens='patches'",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", tokens="patches", window=16),
      ValueError, "`window`"),
    R("explainer-cls-no-cls-token", "ConceptExplainer.fit", "tokens='cls' at a layer without a CLS token",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", tokens="cls", n_concepts=2,
                                            progress=False).fit(c.images, 0), ValueError, "`layer`"),
    R("explainer-normalised", "ConceptExplainer.fit", "normalised images instead of [0, 1]",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", progress=False).fit(
          (c.images - 0.45) / 0.22, 0), ValueError, "`images`"),
    R("explainer-class-name", "ConceptExplainer.fit", "a class name with a typo (suggests close names)",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", progress=False,
                                            class_names=["red disk", "blue square"]).fit(
          c.images, "red disc"), ValueError, "`class_id`"),
    R("explainer-one-image", "ConceptExplainer.fit", "a class with one image",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", progress=False).fit(c.images[:1], 0),
      ValueError, "`images`"),
    R("explainer-negative", "ConceptExplainer.fit", "NMF (ICE, the default) at a layer with negative activations",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2.0", n_concepts=2, progress=False).fit(c.images, 0),
      ValueError, "`layer`"),
    R("explainer-class-range", "ConceptExplainer.fit", "class_id outside the model's outputs",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", n_concepts=3, method="ice",
                                            progress=False).fit(c.images, 5), ValueError, "`class_id`"),
    R("explainer-skip-layer", "ConceptExplainer.fit", "a layer crossed by a skip connection",
      lambda c: conceptkit.ConceptExplainer(SkipNet(), "body", progress=False).fit(c.images, 0),
      extraction.CutError, "`layer`"),
    R("explainer-meta-images", "ConceptExplainer.fit", "images on the `meta` device",
      lambda c: conceptkit.ConceptExplainer(c.model, "block2", progress=False).fit(meta_images(), 0),
      ValueError, "`images`"),
    R("manager-labels", "ConceptManager.fit", "one label too few",
      lambda c: conceptkit.ConceptManager(c.model, "block2", progress=False).fit(c.images, np.zeros(5)),
      ValueError, "`labels`"),
    R("manager-float-labels", "ConceptManager.fit", "fractional labels (would be truncated)",
      lambda c: conceptkit.ConceptManager(c.model, "block2", progress=False).fit(
          c.images, np.array([0.5, 0.2, 1.7, 1.2, 0.1, 0.3])), TypeError, "`labels`"),
    R("manager-single-images", "ConceptManager.fit", "every class has a single image",
      lambda c: conceptkit.ConceptManager(c.model, "block2", progress=False).fit(c.images, np.arange(6)),
      ValueError, "`min_images`"),
    R("top-examples-range", "ClassConcepts.top_examples", "a concept index out of range",
      lambda c: c.explanation.top_examples(3), ValueError, "`concept`"),
    R("concept-maps-kind", "ClassConcepts.concept_maps", "unknown kind",
      lambda c: c.explanation.concept_maps(kind="gradcam"), ValueError, "`kind`"),
    R("concept-maps-uint8", "ClassConcepts.concept_maps", "integer images",
      lambda c: c.explanation.concept_maps((c.images * 255).byte()), TypeError, "`images`"),
    R("load-missing", "conceptkit.load", "a path that does not exist",
      lambda c: conceptkit.load(c.root / "nothing.safetensors"), FileNotFoundError, "`path`"),
    R("load-directory", "conceptkit.load", "a directory instead of a file",
      lambda c: conceptkit.load(c.root), IsADirectoryError, "`path`"),
    R("load-version", "conceptkit.load", "a file from another format version",
      lambda c: conceptkit.load(c.bank_file_with_version(2)), io.FormatError, "`path`"),
    R("load-truncated", "conceptkit.load", "a truncated explanation",
      lambda c: conceptkit.load(c.truncated(c.explanation_file, 0.3)), io.FormatError, "`path`"),
    R("load-not-safetensors", "conceptkit.load", "a text file",
      lambda c: conceptkit.load(_text_file(c)), io.FormatError, "`path`"),
    R("classconcepts-load-kind", "ClassConcepts.load", "a concept bank file",
      lambda c: conceptkit.ClassConcepts.load(c.bank_file), io.FormatError, "`path`"),
    R("decompose-layer-after", "conceptkit.decompose_concept", "a sub-concept layer after the parent's",
      lambda c: conceptkit.decompose_concept(c.model, c.bank, c.images, 0, "fc", progress=False),
      ValueError, "`layer`"),
    R("decompose-concept-range", "conceptkit.decompose_concept", "a concept index out of range",
      lambda c: conceptkit.decompose_concept(c.model, c.bank, c.images, 9, "block1", progress=False),
      ValueError, "`concept`"),
    # -- evaluate ----------------------------------------------------------------------------
    R("evaluate-masks-rank", "evaluate.reliance", "masks (N, H, W) without the part axis",
      lambda c: ev.reliance(c.model, c.images, c.part_masks[:, 0], 1), ValueError, "`masks`"),
    R("evaluate-masks-size", "evaluate.reliance", "masks drawn at another size than the images",
      lambda c: ev.reliance(c.model, c.images, c.part_masks[..., :16, :16], 1), ValueError, "`masks`"),
    R("evaluate-masks-count", "evaluate.reliance", "masks of fewer images than `images`",
      lambda c: ev.reliance(c.model, c.images, c.part_masks[:4], 1), ValueError, "`masks`"),
    R("evaluate-masks-values", "evaluate.reliance", "soft masks (values other than 0 and 1)",
      lambda c: ev.reliance(c.model, c.images, c.part_masks.float() * 0.5, 1), ValueError, "`masks`"),
    R("evaluate-masks-list", "evaluate.reliance", "masks as nested lists",
      lambda c: ev.reliance(c.model, c.images, c.part_masks.tolist(), 1), TypeError, "`masks`"),
    R("evaluate-class-range", "evaluate.reliance", "class_id beyond the model's outputs",
      lambda c: ev.reliance(c.model, c.images, c.part_masks, 5, progress=False), ValueError, "`class_id`"),
    R("evaluate-fill", "evaluate.reliance", "an unknown fill (a typo)",
      lambda c: ev.reliance(c.model, c.images, c.part_masks, 1, fill="grey"), ValueError, "`fill`"),
    R("evaluate-fill-shape", "evaluate.reliance", "a fill callable returning another shape",
      lambda c: ev.reliance(c.model, c.images, c.part_masks, 1, fill=lambda x: x[:, :1], progress=False),
      ValueError, "`fill`"),
    R("evaluate-part-names", "evaluate.reliance", "fewer part names than parts",
      lambda c: ev.reliance(c.model, c.images, c.part_masks, 1, part_names=["corner"]),
      ValueError, "`part_names`"),
    R("localisation-maps-rank", "evaluate.localisation", "maps (N, H, W) instead of (N, k, H, W)",
      lambda c: ev.localisation(torch.rand(6, 8, 8), None, c.part_masks), ValueError, "`result`"),
    R("localisation-maps-count", "evaluate.localisation", "maps of other images than the masks",
      lambda c: ev.localisation(torch.rand(4, 3, 8, 8), None, c.part_masks), ValueError, "`result`"),
    R("localisation-quantile", "evaluate.localisation", "quantile as a percentile (90)",
      lambda c: ev.localisation(c.explanation, c.images, c.part_masks, quantile=90), ValueError, "`quantile`"),
    R("faithfulness-no-importances", "evaluate.faithfulness", "an explanation without importances",
      lambda c: ev.faithfulness(SimpleNamespace(class_id=1, concept_maps=c.explanation.concept_maps),
                                c.model, c.images, c.part_masks), TypeError, "`result`"),
    R("faithfulness-nan-importances", "evaluate.faithfulness", "NaN importances",
      lambda c: ev.faithfulness(SimpleNamespace(class_id=1, importances=[np.nan, 1.0, 2.0],
                                                concept_maps=c.explanation.concept_maps),
                                c.model, c.images, c.part_masks), ValueError, "`result.importances`"),
    R("faithfulness-reliance-class", "evaluate.faithfulness", "a reliance measured for another class",
      lambda c: ev.faithfulness(c.explanation, c.model, c.images, c.part_masks,
                                reliance=ev.reliance(c.model, c.images, c.part_masks, 0, progress=False),
                                progress=False), ValueError, "`reliance`"),
    R("faithfulness-removal", "evaluate.faithfulness", "an unknown removal (a typo)",
      lambda c: ev.faithfulness(c.explanation, c.model, c.images, c.part_masks, removal="erase"),
      ValueError, "`removal`"),
    R("evaluate-world-no-masks", "evaluate.evaluate", "a (model, data) world whose data has no masks",
      lambda c: ev.evaluate(c.explanation, (c.model, c.part_data(masks=None)), progress=False),
      TypeError, "`world`"),
    R("evaluate-not-a-world", "evaluate.evaluate", "a dataset instead of a World or (model, data)",
      lambda c: ev.evaluate(c.explanation, c.part_data(), progress=False), TypeError, "`world`"),
    R("evaluate-no-importances", "evaluate.evaluate", "a class explanation without importances",
      lambda c: ev.evaluate({1: SimpleNamespace(class_id=1, concept_maps=c.explanation.concept_maps)},
                            (c.model, c.part_data()), progress=False), TypeError, "`explanation`"),
    R("evaluate-class-absent", "evaluate.evaluate", "data without an image of the explained class",
      lambda c: ev.evaluate(c.explanation, (c.model, c.part_data(labels=np.zeros(6, int))),
                            progress=False), ValueError, "`explanation`"),
    # -- bottleneck --------------------------------------------------------------------------
    R("cbm-one-class", "bottleneck.ConceptBottleneckModel", "n_classes=1",
      lambda c: bottleneck.ConceptBottleneckModel(nn.Linear(8, 4), 4, 1), ValueError, "`n_classes`"),
    R("cbm-concepts-range", "bottleneck.train_cbm", "concept labels outside [0, 1]",
      lambda c: bottleneck.train_cbm(c.cbm, (c.cbm_data[0], c.cbm_data[1] * 3, c.cbm_data[2]),
                                     epochs=1, progress=False), ValueError, "`train_data[1] (concepts)`"),
    R("cbm-label-range", "bottleneck.train_cbm", "a class label >= n_classes",
      lambda c: bottleneck.train_cbm(c.cbm, (c.cbm_data[0], c.cbm_data[1], c.cbm_data[2] + 5),
                                     epochs=1, progress=False), ValueError, "`train_data`"),
    R("cbm-rows", "bottleneck.train_cbm", "x, concepts and labels with different row counts",
      lambda c: bottleneck.train_cbm(c.cbm, (c.cbm_data[0][:30], c.cbm_data[1], c.cbm_data[2]),
                                     epochs=1, progress=False), ValueError, "`train_data`"),
    R("cbm-nan", "bottleneck.train_cbm", "NaN inputs",
      lambda c: bottleneck.train_cbm(c.cbm, (c.cbm_data[0] * float("nan"), c.cbm_data[1], c.cbm_data[2]),
                                     epochs=1, progress=False), ValueError, "`train_data[0]` (x)"),
    R("cbm-input-width", "bottleneck.train_cbm", "inputs of another width than the concept encoder",
      lambda c: bottleneck.train_cbm(c.cbm, (torch.ones(40, 5), c.cbm_data[1], c.cbm_data[2]),
                                     epochs=1, progress=False), ValueError, "`train_data`"),
    R("cbm-mode", "bottleneck.train_cbm", "unknown mode",
      lambda c: bottleneck.train_cbm(c.cbm, c.cbm_data, mode="jointly"), ValueError, "`mode`"),
    R("intervene-mask", "bottleneck.intervene", "a float mask instead of booleans",
      lambda c: bottleneck.intervene(c.cbm, c.cbm_data[0][:4], c.cbm_data[1][:4], np.ones(4)),
      TypeError, "`mask`"),
    R("intervene-input-width", "bottleneck.intervene", "inputs of another width than the concept encoder",
      lambda c: bottleneck.intervene(c.cbm, torch.ones(4, 5), c.cbm_data[1][:4], torch.ones(4, dtype=torch.bool)),
      ValueError, "`x`"),
    R("intervention-policy", "bottleneck.intervention_curve", "unknown policy",
      lambda c: bottleneck.intervention_curve(c.cbm, c.cbm_data, policy="greedy"), ValueError, "`policy`"),
    R("posthoc-not-fitted", "bottleneck.PosthocCBM.predict", "predict before fit",
      lambda c: bottleneck.PosthocCBM(bottleneck.CAVBank(np.eye(3), np.zeros(3), ["a", "b", "c"]))
      .predict(np.ones((2, 3))), ValueError, "fit(X, y)"),
    R("label-free-labels", "bottleneck.LabelFreeCBM.fit", "labels of another length than the images",
      lambda c: bottleneck.LabelFreeCBM(c.model, _FakeClip(), ["red", "round"], ["a", "b"], progress=False)
      .fit(c.images, np.zeros(4, dtype=int)), ValueError, "`labels`"),
    R("cbm-load-kind", "bottleneck.ConceptBottleneckModel.load", "a concept bank file",
      lambda c: bottleneck.ConceptBottleneckModel.load(c.bank_file), io.FormatError, "`path`"),
    R("cbm-load-encoder", "bottleneck.ConceptBottleneckModel.load", "an encoder of another architecture",
      lambda c: bottleneck.ConceptBottleneckModel.load(c.cbm_file, nn.Linear(9, 4)), ValueError,
      "`concept_encoder`"),
    R("posthoc-load-kind", "bottleneck.PosthocCBM.load", "a concept bank file",
      lambda c: bottleneck.PosthocCBM.load(c.bank_file), io.FormatError, "`path`"),
    R("load-label-free", "conceptkit.load", "a label-free CBM (its backbone is not saved)",
      lambda c: conceptkit.load(c.label_free_file()), ValueError, "`path`"),
    R("cbm-load-truncated", "bottleneck.ConceptBottleneckModel.load", "a truncated file",
      lambda c: bottleneck.ConceptBottleneckModel.load(c.truncated(c.cbm_file, 0.5)), io.FormatError, "`path`"),
    # -- datasets and command line -----------------------------------------------------------
    R("dataset-size", "datasets.make_concept_dataset", "image_size below the minimum",
      lambda c: make_concept_dataset(2, image_size=8), ValueError, "`image_size`"),
    # -- pixel ablation, the atlas, naming ---------------------------------------------------
    R("pixel-score", "pipeline.pixel_ablation", "an unknown score ('margin')",
      lambda c: pipeline.pixel_ablation(c.model, c.images, torch.rand(6, 2, 32, 32), 0,
                                                   score="margin", progress=False),
      ValueError, "`score`"),
    R("pixel-thresholds", "pipeline.pixel_ablation", "one threshold for two concepts",
      lambda c: pipeline.pixel_ablation(c.model, c.images, torch.rand(6, 2, 32, 32), 0,
                                                   thresholds=[0.5], progress=False),
      ValueError, "`thresholds`"),
    R("clip-crop-activation", "naming.name_by_clip", "an unknown crop_activation ('pooled')",
      lambda c: naming.name_by_clip(c.explanation, c.images, _FakeClip(),
                                               vocabulary=["a", "b"], crop_activation="pooled"),
      ValueError, "`crop_activation`"),
    R("cli-no-images", "conceptkit explain (CLI)", "an image folder without images",
      lambda c: cli("explain", "--model", "reference", "--images", str(c.image_folder("empty", {})),
                    "--class", "0", "--out", str(c.root / "out")), CLIError, "`--images`"),
    R("cli-corrupt-image", "conceptkit explain (CLI)", "a corrupted image file",
      lambda c: cli("explain", "--model", "reference", "--class", "0", "--out", str(c.root / "out"),
                    "--images", str(c.image_folder("broken", {"a.png": b"not a png"}))),
      CLIError, "`--images`"),
    R("cli-report-missing", "conceptkit report (CLI)", "a saved file that does not exist",
      lambda c: cli("report", str(c.root / "missing.safetensors"), "--out", str(c.root / "r")),
      CLIError, "`path`"),
]


# Rows of the second reliability round (issue 15), kept in their own module.
from _errors_reliability import rows as _reliability_rows  # noqa: E402

ROWS += _reliability_rows(R, cli, CLIError)


class _FakeClip:
    """A CLIP stand-in: the row fails on the labels before any embedding is computed."""

    def encode_image(self, images):
        return images.flatten(1)[:, :4]

    def encode_text(self, texts):
        return torch.eye(4)[:len(texts)]


def _pickle_file(c: Context) -> Path:
    target = c.root / "pickled.safetensors"
    torch.save({"components": torch.ones(2, 2)}, target)
    return target


def _text_file(c: Context) -> Path:
    target = c.root / "notes.safetensors"
    target.write_text("these are not tensors\n" * 4)
    return target


# ---------------------------------------------------------------------------------------------
# Running a row
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    error: BaseException | None
    message: str           # normalised: the context's temporary directory becomes <tmp>
    raised_in: str         # file of the innermost frame of the exception's traceback


def run_row(row: Row, ctx: Context) -> Outcome:
    try:
        row.call(ctx)
    except Exception as err:  # noqa: BLE001 - every exception is inspected by the caller
        frames = traceback.extract_tb(err.__traceback__)
        message = str(err).replace(str(ctx.root), "<tmp>")
        return Outcome(err, message, frames[-1].filename if frames else "")
    return Outcome(None, "", "")


def _ours(filename: str) -> bool:
    path = Path(filename).resolve()
    return PACKAGE_DIR in path.parents or path == Path(__file__).resolve()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Context:
    return Context(tmp_path_factory.mktemp("bad-inputs"))


@pytest.fixture(scope="module")
def outcomes(ctx) -> dict[str, Outcome]:
    return {}


def outcome_of(row: Row, ctx: Context, cache: dict[str, Outcome]) -> Outcome:
    if row.id not in cache:
        cache[row.id] = run_row(row, ctx)
    return cache[row.id]


def test_rows_are_unique_and_many():
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids))
    assert len(ROWS) >= 35


def _param(row: Row):
    marks = [pytest.mark.xfail(strict=True, reason=row.pending)] if row.pending else []
    return pytest.param(row, id=row.id, marks=marks)


@pytest.mark.parametrize("row", [_param(row) for row in ROWS])
def test_bad_input(row: Row, ctx: Context, outcomes):
    result = outcome_of(row, ctx, outcomes)
    assert result.error is not None, f"{row.entry} accepted {row.bad!r} without an error"
    assert isinstance(result.error, row.error), (
        f"{row.entry}: expected {row.error.__name__}, got {type(result.error).__name__}: {result.message}")
    assert row.names in result.message, f"the message does not name {row.names}: {result.message!r}"
    assert _ours(result.raised_in), (
        f"{row.entry} raised from {result.raised_in} (not conceptkit's own checks): {result.message!r}")


# ---------------------------------------------------------------------------------------------
# The page: docs/errors.md is generated from the table
# ---------------------------------------------------------------------------------------------

PREFIX = 70  # characters of each message the page must reproduce exactly


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`` {_cell(text)} ``"


def doc_line(row: Row, result: Outcome) -> str:
    kind = type(result.error).__name__ if result.error is not None else "(no error)"
    kind = f"`{kind}`"
    if row.pending:
        kind += f" (to be `{row.error.__name__}`: {_cell(row.pending)})"
    return (f"| {row.id} | `{row.entry}` | {_cell(row.bad)} | {kind} | "
            f"{_code(result.message)} |")


HEADER = """# Errors: what bad input gives

conceptkit validates its inputs at every public entry point, so a mistake is reported by the
function you called, with the argument at fault named in the message, never as a traceback from
deep inside torch, scikit-learn or scipy, and never as a silently wrong result. The table below
is the bad-input matrix of `tests/contracts/test_errors.py`: every row is a test that makes the call and
checks the exception type, that the message names the argument, and that the error is raised
by conceptkit itself. The page is generated from that table (`python tests/contracts/test_errors.py`), and
a test checks that it matches what the code says. `<tmp>` stands for the test's temporary
directory.

`FormatError` is `conceptkit.io.FormatError`, a subclass of `ValueError`; `CutError` and
`ImageSizeError` (images of a size the model does not take) are `conceptkit.extraction.CutError`
and `conceptkit.extraction.ImageSizeError`, and `NegativeActivationsError` (negative activations
for a factorizer that needs non-negative ones, such as NMF) is
`conceptkit.concepts.NegativeActivationsError`, also `ValueError`s. `NotFittedError` is
scikit-learn's (`sklearn.exceptions.NotFittedError`). On the command line the same errors exit
with status 2 and print `error: <message>` (the rows whose exception reads `CLIError`; set
`CONCEPTKIT_DEBUG=1` for the traceback).

## Behaviour that is not an error

- **A model in train mode.** Every entry point that runs your model switches it to eval mode
  for the call (dropout off, batch-norm running statistics used and not updated) and restores
  every submodule's training flag afterwards, also when the call raises. Results equal those of
  the model in eval mode (`tests/contracts/test_hygiene.py`).
- **Images on another device than the model.** Images (and activations) are moved batch by
  batch to the device of the model (or of the head `h`), and results come back on the CPU, so a
  CPU tensor and a CUDA model (or the reverse) just work (CI has no GPU, so this is exercised
  on GPU machines only). Only the `meta` device, which holds no data, is refused with an error
  naming the argument (rows `extract-meta-*`, `explainer-meta-images`).
- **Saved files never execute code.** Loading parses a JSON header and copies raw tensor
  buffers; a pickle renamed `.safetensors` is refused (`bank-load-pickle`). See
  `tests/contracts/test_safe_loading.py`.
- **Writing into a folder written before.** A folder conceptkit owns (a class page's folder,
  an index with its class folders, the atlas report, `conceptkit explain --out`) keeps a list
  of what it wrote (`.conceptkit-outputs.json`). A new run removes the files the previous run
  wrote and this one did not (another class's folder, a figure it no longer draws), so the
  folder never mixes two runs. Files conceptkit did not write are never touched
  (`tests/report/test_owned_folders.py`).

## The bad-input matrix

| id | entry point | bad input | exception | message (as the user sees it) |
|---|---|---|---|---|
"""


def _public_errors() -> dict[str, str]:
    """Every exception class a public module of conceptkit exports: name -> dotted path."""
    import importlib
    import pkgutil

    import conceptkit

    found = {}
    names = ["conceptkit", "conceptkit.io"] + [
        f"conceptkit.{m.name}" for m in pkgutil.iter_modules(conceptkit.__path__)
        if m.ispkg and not m.name.startswith("_")]
    for module_name in names:
        module = importlib.import_module(module_name)
        exported = getattr(module, "__all__", None) or [n for n in vars(module)
                                                         if not n.startswith("_")]
        for name in exported:
            value = getattr(module, name)
            if (isinstance(value, type) and issubclass(value, Exception)
                    and value.__module__.startswith("conceptkit.")):
                found.setdefault(name, f"{module_name}.{name}")
    return found


def test_the_intro_names_every_error_class_of_conceptkit_in_the_table():
    # the intro named FormatError, CutError and ImageSizeError, not NegativeActivationsError
    assert DOC.is_file(), "docs/errors.md is missing: run `python tests/contracts/test_errors.py`"
    table = [line.split("|")[4].strip().strip("`").split("`")[0] for line in
             DOC.read_text().splitlines() if line.startswith("| ") and not line.startswith("| id ")]
    public = _public_errors()
    shown = {name for name in table if name in public}
    assert {"FormatError", "NegativeActivationsError"} <= shown, shown
    intro = " ".join(HEADER.split("## Behaviour", 1)[0].split())
    for name in sorted(shown):
        assert f"`{public[name]}`" in intro, name


def render_doc(ctx: Context) -> str:
    cache: dict[str, Outcome] = {}
    lines = [doc_line(row, outcome_of(row, ctx, cache)) for row in ROWS]
    return HEADER + "\n".join(lines) + "\n"


def test_doc_lists_every_row(ctx: Context, outcomes):
    assert DOC.is_file(), "docs/errors.md is missing: run `python tests/contracts/test_errors.py`"
    text = DOC.read_text()
    lines = {line.split("|")[1].strip(): line for line in text.splitlines()
             if line.startswith("| ") and not line.startswith("| id ")}
    for row in ROWS:
        result = outcome_of(row, ctx, outcomes)
        assert row.id in lines, f"docs/errors.md has no row {row.id!r}: run `python tests/contracts/test_errors.py`"
        line = lines[row.id]
        assert f"`{type(result.error).__name__}`" in line
        prefix = _cell(result.message)[:PREFIX]
        assert prefix in line, (f"docs/errors.md shows another message for {row.id!r}; expected it to "
                                f"start with {prefix!r}. Run `python tests/contracts/test_errors.py`.")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        context = Context(Path(tmp))
        if "--print" in sys.argv:
            for item in ROWS:
                out = run_row(item, context)
                ok = (out.error is not None and isinstance(out.error, item.error)
                      and item.names in out.message and _ours(out.raised_in))
                kind = type(out.error).__name__ if out.error else None
                print(f"{'ok ' if ok else 'BAD'} {item.id}: {kind} @ {Path(out.raised_in).name}: "
                      f"{out.message[:300]}")
        else:
            DOC.parent.mkdir(exist_ok=True)
            DOC.write_text(render_doc(context))
            print(f"wrote {DOC} ({len(ROWS)} rows)")
