"""``conceptkit explain``: explain one class of a model on a folder of images."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from ..pipeline._examples import fewer_exemplars_quietly
from ._checks import (
    CommandError,
    check_out_targets,
    command_terms,
    load_model_flags,
    show_progress,
)
from ._checks import command_line_terms as _in_terms
from ._images import file_ids, load_images

#: ``--factorizer`` choices. Signed activations (ViT/CLIP tokens) need one that takes signs
#: (``topk_sae``, the default there, ``semi_nmf``, ``pca``, ...): NMF refuses them.
FACTORIZER_CHOICES = {"nmf": "NMF", "semi_nmf": "SemiNMF", "kmeans": "KMeansConcepts",
                      "pca": "PCAConcepts", "ica": "ICAConcepts", "sparse": "SparseDictionary",
                      "topk_sae": "TopKSAE"}

#: Python argument names in error messages, and the ``explain`` options that set them.
_FLAGS = {"n_concepts": "--n-concepts", "layer": "--layer", "patch_size": "--patch-size",
          "batch_size": "--batch-size", "images": "--images", "class_id": "--class",
          "method": "--method", "importance": "--importance", "seed": "--seed",
          "tokens": "--tokens", "window": "--window", "device": "--device"}


def command_line_terms(message: str) -> str:
    """An error message of the Python API in ``conceptkit explain`` terms: argument names become
    options (`` `n_concepts` `` → `` `--n-concepts` ``), factorizer calls become
    ``--factorizer`` choices."""
    message = _in_terms(message, _FLAGS)
    by_class = {cls: choice for choice, cls in FACTORIZER_CHOICES.items()}
    return re.sub(r"factorizer=(\w+)\([^)]*\)",
                  lambda m: f"`--factorizer {by_class[m.group(1)]}`" if m.group(1) in by_class
                  else m.group(0), message)


def size_terms(message: str, size: int) -> str:
    """An error on images too small (or of a size the model does not take) in the terms of
    ``--size``, which made them that size: the flag to change is ``--size``, not ``--images``."""
    message = re.sub(r"^`images` of (\d+x\d+) pixels (are|do)",
                     rf"`--size` {size} makes images of \1 pixels, which \2", message)
    message = re.sub(r"It runs on images of at least (\d+)x\d+ pixels; resize the images",
                     r"It runs on images of at least \1x\1 pixels; pass `--size \1` or more (or "
                     r"leave `--size` out: the model's own input size)", message)
    return message.replace("resize the images to the size it was built for",
                           "pass that size with `--size`, or leave `--size` out (the model's own "
                           "input size)")


def explain_main(args: argparse.Namespace) -> int:
    """``conceptkit explain``: errors and warnings of the library in the command's terms."""
    with command_terms(_FLAGS, "`--images`"):
        return _explain(args)


def _explain(args: argparse.Namespace) -> int:
    from ..concepts._checks import NegativeActivationsError
    from ..extraction._sizes import ImageSizeError
    from ..models._candidates import class_index, missing_layer_message
    from ..pipeline import DISCOVERY_METHODS, ConceptExplainer

    if args.class_name is not None and not args.class_name.strip():
        raise CommandError("`--class-name` is empty; give the name the report shows, or leave "
                           "it out to use the model's class name.")
    from .._validation import resolve_device

    resolve_device(args.device, "--device")  # a device this machine lacks: before any work
    loaded = load_model_flags(args.model, args.weights)
    if args.layer is None and loaded.layer is None:
        raise CommandError(missing_layer_message(loaded.model, loaded.input_size, "`--layer`")
                           + " Pass one with --layer NAME.")
    # A class name is resolved before any image is read: a typo fails at once.
    class_id = class_index(args.class_id, loaded.class_names, "`--class`")
    name = args.class_name or (loaded.class_names[class_id] if class_id < len(loaded.class_names)
                               else None)
    check_out_targets(args.out, _targets(class_id, name))  # before any work
    encoders = None
    if args.name_with == "clip":  # a wrong --clip or an offline download fails before the fit
        from ._naming import load_clip_encoders

        encoders = load_clip_encoders(args)
    size = args.size if args.size is not None else loaded.input_size
    images, files = load_images(args.images, size)
    factorizer = None
    n_concepts = args.n_concepts
    if args.factorizer is not None:
        from ..concepts import FACTORIZERS

        k = n_concepts if n_concepts is not None else DISCOVERY_METHODS[args.method].default_concepts
        factorizer = FACTORIZERS[FACTORIZER_CHOICES[args.factorizer]](n_concepts=k)
        n_concepts = None  # the factorizer carries it
    tokens = args.tokens
    if tokens == "auto" and (args.visualize or args.name_with == "classes"):
        tokens = "patches"  # MACO pictures and naming by classes run h on patch-token concepts
    try:
        explainer = ConceptExplainer(loaded, args.layer, n_concepts=n_concepts, method=args.method,
                                     importance=args.importance, patch_size=args.patch_size,
                                     factorizer=factorizer, batch_size=args.batch_size,
                                     seed=args.seed, progress=show_progress(args.quiet),
                                     tokens=tokens, window=args.window, device=args.device)
        result = explainer.fit(images, class_id, name, image_ids=file_ids(files))
    except NegativeActivationsError as err:
        raise ValueError(err.command_line()) from err
    except ImageSizeError as err:  # images of --size: say so, not "resize the images"
        message = str(err) if args.size is None else size_terms(str(err), args.size)
        raise ValueError(command_line_terms(message)) from err
    except ValueError as err:  # (command_terms adds ACE's advice in the command's terms)
        raise ValueError(command_line_terms(str(err))) from err
    if args.name_with or args.visualize:
        from ._naming import name_and_visualize

        args.clip_encoders = encoders
        name_and_visualize(result, args, loaded, size)
    from ..report._outputs import owned_folder, record

    out = Path(args.out)
    check_out_targets(out, _targets(class_id, result.class_name))  # (the name as fitted)
    # --out is this run's: the class folder of an earlier run with another --class is removed,
    # not left beside this one (explanation.safetensors holds this run's class only)
    with owned_folder(out, "conceptkit explain"):
        saved = result.save(out / "explanation.safetensors")
        record(saved)
        page = result.report(out)
    named = result.class_name.strip().lower() not in ("", f"class {class_id}")
    what = f"{result.class_name!r} (class {class_id})" if named else f"class {class_id}"
    print(f"explained {len(files)} images of {what} at {explainer.layer} of {loaded.name}")
    print("concepts, most important first:")
    level = (result.importance.params or {}).get("confidence")
    for c in result.ranking[:5]:
        with fewer_exemplars_quietly():
            _, sources = result.top_examples(int(c), 3)
        print(f"  {result.concept_label(int(c))}: importance {result.importances[c]:.3f}"
              f"{interval_text(result, int(c), level)}; "
              f"top exemplars from {', '.join(str(s) for s in sources)}")
    for note in result.notes():
        print(f"note: {' '.join(note.split())}")
    print(f"saved {saved}\nreport {page}")
    return 0


def interval_text(result, concept: int, level: float | None) -> str:
    """`` (95 % CI 0.021 to 0.137)`` for one concept, or ``""`` when the explanation has no
    interval for it (``confidence=None``, or a single image)."""
    if result.ci_low is None or result.ci_high is None:
        return ""
    low, high = float(result.ci_low[concept]), float(result.ci_high[concept])
    if not (math.isfinite(low) and math.isfinite(high)):
        return ""
    shown = "" if level is None else f"{100 * float(level):g} % "
    return f" ({shown}CI {low:.3f} to {high:.3f})"


def _targets(class_id: int, class_name: str | None) -> list[str]:
    """What ``explain`` writes into ``--out``: the explanation and the class's report folder."""
    from ..report._write import class_slug

    return ["explanation.safetensors",
            class_slug(class_id, class_name or f"class {class_id}")]
