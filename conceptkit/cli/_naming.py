"""``conceptkit explain --name-with ... --visualize``: name and draw an explanation's concepts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._checks import CommandError, show_progress

PROBE_IMAGES_PER_CLASS = 20
DEFAULT_VISUALIZE_STEPS = 128


def add_naming_arguments(parser: argparse.ArgumentParser) -> None:
    """The naming and visualisation options of ``conceptkit explain``."""
    parser.add_argument("--name-with", default=None, choices=["dissect", "clip", "classes"],
                        help="name the concepts: dissect (part masks of a ground-truth world, "
                             "--probe WORLD), clip (an open_clip model, --clip NAME) or classes "
                             "(the classes each concept pushes)")
    parser.add_argument("--probe", default=None,
                        help="dissect: a ground-truth world (shapes, textures, scales, context); "
                             "clip: a folder or glob of probe images (default: the class images)")
    parser.add_argument("--clip", default=None,
                        help="open_clip model name for --name-with clip (e.g. ViT-B-32) or "
                             "local-dir:/path (no default: required with --name-with clip)")
    parser.add_argument("--clip-weights", default=None,
                        help="local open_clip checkpoint file (offline) or a pretrained tag (required "
                             "with --clip NAME, not with local-dir:)")
    parser.add_argument("--vocabulary", default=None,
                        help="clip: imagenet (default) | imagenet21k | a text file with one word "
                             "per line")
    parser.add_argument("--visualize", action="store_true",
                        help="draw every concept with MACO for the report (slow: ~steps x 6 "
                             "forward/backward passes per concept)")
    parser.add_argument("--visualize-steps", type=int, default=None,
                        help=f"MACO steps per concept with --visualize (default "
                             f"{DEFAULT_VISUALIZE_STEPS})")


def check_naming_arguments(args: argparse.Namespace) -> None:
    """Refuse inconsistent naming options before any work (one ``error:`` line, status 2)."""
    from ..datasets import WORLDS

    # options of one mode given without it would be ignored: refused, like --probe below
    if args.vocabulary is not None and args.name_with != "clip":
        raise CommandError("`--vocabulary` goes with --name-with clip; it would be ignored "
                           f"with --name-with {args.name_with or '(none)'}.")
    if args.visualize_steps is not None and not args.visualize:
        raise CommandError("`--visualize-steps` goes with --visualize; it would be ignored "
                           "without it.")
    if args.vocabulary is None:
        args.vocabulary = "imagenet"
    if args.visualize_steps is None:
        args.visualize_steps = DEFAULT_VISUALIZE_STEPS
    if args.name_with == "dissect" and args.probe not in WORLDS:
        raise CommandError(f"`--probe` must name a ground-truth world for --name-with dissect "
                           f"({', '.join(WORLDS)}); got {args.probe!r}.")
    if args.name_with == "clip":
        if not args.clip:
            raise CommandError("`--clip` (an open_clip model name) is required with "
                               "--name-with clip.")
        if args.vocabulary not in ("imagenet", "imagenet21k") \
                and not Path(args.vocabulary).is_file():
            raise CommandError(f"`--vocabulary` {args.vocabulary!r} is neither 'imagenet', "
                               f"'imagenet21k' nor a text file.")
        if not args.clip_weights and not args.clip.startswith("local-dir:"):
            # open_clip then builds the architecture with random weights (and only logs it):
            # names read from a random CLIP would mean nothing
            raise CommandError(f"`--clip-weights` is required with --name-with clip: a local "
                               f"checkpoint file or an open_clip pretrained tag for "
                               f"{args.clip!r} (without it the model has random weights).")
        _check_clip_names(args.clip, args.clip_weights)
    if args.name_with != "clip" and (args.clip or args.clip_weights):
        raise CommandError("`--clip` and `--clip-weights` go with --name-with clip.")
    if args.probe is not None and args.name_with not in ("dissect", "clip"):
        raise CommandError(f"`--probe` goes with --name-with dissect or clip; it would be "
                           f"ignored with --name-with {args.name_with or '(none)'}.")


#: ``ClipEncoders.from_open_clip``'s argument names in its errors, and the options that set them.
CLIP_FLAGS = {"model": "--clip", "pretrained": "--clip-weights"}


def _check_clip_names(arch: str, weights: str | None) -> None:
    """``--clip`` an open_clip architecture, ``--clip-weights`` a file or one of its tags, before
    any work (open_clip itself says so only when the model is created)."""
    if arch.startswith(("local-dir:", "hf-hub:")):
        return
    try:
        import open_clip
    except ImportError as err:
        raise CommandError("`--name-with clip` needs the open_clip package (pip install "
                           "open_clip_torch).") from err

    from .._validation import close_names

    if open_clip.get_model_config(arch) is None:
        close = close_names(arch, open_clip.list_models())
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise CommandError(f"`--clip` {arch!r} is not an open_clip model name (see "
                           f"open_clip.list_models(), or use local-dir:/path).{hint}")
    if weights is None or Path(weights).is_file():
        return
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if weights not in tags:
        listed = ", ".join(tags) if tags else "none"
        raise CommandError(f"`--clip-weights` {weights!r} is neither a file nor a pretrained tag "
                           f"of {arch!r} (its tags: {listed}).")


def load_clip_encoders(args: argparse.Namespace) -> Any:
    """The CLIP encoders of ``--clip`` / ``--clip-weights``, loaded before any work: an error
    names those options, in one line (open_clip's own log line is silenced)."""
    import logging

    from ..bottleneck import ClipEncoders
    from ._checks import command_terms

    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)  # open_clip logs "not found" on the root logger, then raises
    try:
        with command_terms(CLIP_FLAGS):
            return ClipEncoders.from_open_clip(args.clip, pretrained=args.clip_weights)
    finally:
        logging.disable(previous)


def _vocabulary(text: str) -> Any:
    if text in ("imagenet", "imagenet21k"):
        return text
    path = Path(text)
    if not path.is_file():
        raise CommandError(f"`--vocabulary` {text!r} is neither 'imagenet', 'imagenet21k' "
                           f"nor a text file.")
    words = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [w for w in words if w]


def name_and_visualize(result: Any, args: argparse.Namespace, loaded: Any, size: int) -> None:
    """Run the naming / visualisation the arguments ask for on ``result`` (in place)."""
    progress = show_progress(args.quiet)
    if args.name_with == "dissect":
        from ..datasets import WORLDS, load_world

        if args.probe not in WORLDS:
            raise CommandError(f"`--probe` must name a ground-truth world for --name-with dissect "
                             f"({', '.join(WORLDS)}); got {args.probe!r}.")
        probe = load_world(args.probe).sample(PROBE_IMAGES_PER_CLASS, seed=args.seed, split="test")
        result.name_concepts("dissect", probe, progress=progress)
    elif args.name_with == "clip":
        from ._images import load_images

        if not args.clip:
            raise CommandError("`--clip` (an open_clip model name) is required with "
                               "--name-with clip.")
        encoders = getattr(args, "clip_encoders", None)
        if encoders is None:
            encoders = load_clip_encoders(args)
        probe = result.images if args.probe is None else load_images(args.probe, size)[0]
        result.name_concepts("clip", probe, encoders, vocabulary=_vocabulary(args.vocabulary),
                             progress=progress)
    elif args.name_with == "classes":
        names = loaded.class_names if len(loaded.class_names) else None
        n_outputs = _n_outputs(result)
        result.name_concepts("classes", class_names=names if names and len(names) == n_outputs
                             else None, progress=progress)
    if result.names is not None:
        print(result.names)
    if args.visualize:
        for c in result.ranking:
            result.visualize(int(c), steps=args.visualize_steps, seed=args.seed, progress=progress)


def _n_outputs(result: Any) -> int:
    import torch

    handle = result.model_at_layer
    with torch.no_grad():
        acts = result.activations[:1]
        context = None if result.context is None else result.context[:1]
        out = handle.maps_head(acts) if context is None else handle.maps_head(acts, context)
    return int(out.shape[-1])
