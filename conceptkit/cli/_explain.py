"""``conceptkit explain``: explain one class of a model on a folder of images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._checks import CommandError
from ._images import load_images

#: ``--factorizer`` choices: signed activations (ViT/CLIP tokens) need ``semi_nmf`` or ``pca``.
FACTORIZER_CHOICES = {"nmf": "NMF", "semi_nmf": "SemiNMF", "kmeans": "KMeansConcepts",
                      "pca": "PCAConcepts", "ica": "ICAConcepts", "sparse": "SparseDictionary",
                      "topk_sae": "TopKSAE"}


def explain_main(args: argparse.Namespace) -> int:
    from ..models import load as load_model
    from ..pipeline import ConceptExplainer

    loaded = load_model(args.model, args.weights)
    layer = args.layer or loaded.layer
    if layer is None:
        raise CommandError("`--layer` is required for this model (no default layer known).")
    size = args.size if args.size is not None else loaded.input_size
    images, files = load_images(args.images, size)
    name = args.class_name or (loaded.class_names[args.class_id] if args.class_id < len(loaded.class_names)
                               else f"class {args.class_id}")
    factorizer = None
    if args.factorizer is not None:
        from ..concepts import FACTORIZERS

        factorizer = FACTORIZERS[FACTORIZER_CHOICES[args.factorizer]](n_concepts=args.n_concepts)
    explainer = ConceptExplainer(loaded.model, layer, n_concepts=args.n_concepts, method=args.method,
                                 importance=args.importance, patch_size=args.patch_size,
                                 factorizer=factorizer,
                                 batch_size=args.batch_size, seed=args.seed,
                                 preprocess=loaded.preprocess, model_name=loaded.name,
                                 progress=not args.quiet)
    result = explainer.fit(images, args.class_id, name)
    if args.name_with or args.visualize:
        from ._naming import name_and_visualize

        name_and_visualize(result, args, loaded, size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = result.save(out / "explanation.safetensors")
    page = result.report(out)
    print(f"explained {len(files)} images of {name!r} at {layer} of {loaded.name}")
    labels = result.labels
    for rank, c in enumerate(result.ranking[:5]):
        named = "" if labels[int(c)] == f"concept {int(c)}" else f" ({labels[int(c)]})"
        print(f"  #{rank + 1} concept {int(c)}{named}: importance {result.importances[c]:.3f}")
    print(f"saved {saved}\nreport {page}")
    return 0
