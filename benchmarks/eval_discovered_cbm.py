"""Discover, name, then bottleneck: a DiscoveredCBM against the reference CNN on the shapes world.

CRAFT (10 concepts per class, ``block4``) on 30 train images of each class; every concept named by
dissection over a validation probe (10 images per class, all classes); the CBM's head fitted on
100 other train images per class (no spurious cue) and scored on the test split (``--n-test``
images per class) against the reference CNN on the same images. Interventions: Gaussian noise
(σ = 0.2) on the test images, then the concepts named after a part set to its true presence —
all of them, or only those whose name's trust (AUC) is at least 0.9.

Run: ``python benchmarks/eval_discovered_cbm.py [--n-test 100] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import conceptkit  # noqa: E402
from conceptkit.bottleneck import DiscoveredCBM  # noqa: E402
from conceptkit.datasets import make_concept_dataset, reference_model  # noqa: E402


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predicted == labels).double().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = reference_model()
    discover = make_concept_dataset(30, seed=args.seed, split="train")
    fit_set = make_concept_dataset(100, seed=args.seed + 1, split="train", spurious=False)
    probe = make_concept_dataset(10, seed=args.seed + 2, split="val", spurious=False)
    test = make_concept_dataset(args.n_test, seed=args.seed, split="test", spurious=False)
    manager = conceptkit.ConceptManager(model, "block4", n_concepts=10, method="craft",
                                        seed=args.seed, progress=False,
                                        importance="gradient_input")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager.fit(discover.images, discover.labels)
    for cc in manager.classes_.values():
        cc.name_concepts("dissect", probe, class_images_only=False)
    explainer = conceptkit.ConceptExplainer(model, "block4", progress=False)
    acts = {name: explainer.activations(data.images)
            for name, data in (("fit", fit_set), ("test", test))}
    with torch.no_grad():
        reference = accuracy(model(test.images).argmax(1), test.labels)
    print(f"reference CNN: {100 * reference:.2f} % on {len(test)} test images")
    for pooling in ("mean", "max"):
        for nnz in (5, 10):
            cbm = DiscoveredCBM(manager, nnz_per_class=nnz, pooling=pooling, progress=False)
            cbm.fit(activations=acts["fit"], labels=fit_set.labels)
            acc = accuracy(cbm.predict(activations=acts["test"]), test.labels)
            print(f"DiscoveredCBM pooling={pooling} nnz_per_class<={nnz}: {100 * acc:.2f} % "
                  f"({100 * (acc - reference):+.2f} points), non-zero weights per class "
                  f"{cbm.nnz_per_class_.tolist()}")
    cbm = DiscoveredCBM(manager, nnz_per_class=10, progress=False)
    cbm.fit(activations=acts["fit"], labels=fit_set.labels)
    noise = torch.randn(test.images.shape, generator=torch.Generator().manual_seed(args.seed))
    noisy = explainer.activations((test.images + 0.2 * noise).clamp(0, 1))
    with torch.no_grad():
        ref_noisy = accuracy(model((test.images + 0.2 * noise).clamp(0, 1)).argmax(1), test.labels)
    before = accuracy(cbm.predict(activations=noisy), test.labels)
    print(f"noisy test images (sigma 0.2): reference CNN {100 * ref_noisy:.2f} %, CBM "
          f"{100 * before:.2f} %")
    for min_trust in (None, 0.8, 0.9):
        values, mask = cbm.true_concepts(test.concepts, list(test.concept_names), min_trust=min_trust)
        out = cbm.intervene(activations=noisy, concept_values=values, mask=mask)
        print(f"  intervene on {int(mask.sum())}/{cbm.n_concepts} named concepts (min trust "
              f"{min_trust}): {100 * accuracy(out.class_logits.argmax(1), test.labels):.2f} %")
    print(f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
