"""Ground-truth evaluation of concept discovery, importance and maps (acceptance of issues 3, 4).

On the reference dataset (train split: the spurious cue sits in 90 % of class-0 images) and the
shipped reference CNN, every class is explained at ``block4`` with ``ConceptExplainer(...,
n_concepts=10, seed=seed)`` for each discovery method, and the concept maps are scored against
the ground-truth concept masks:

- **localisation** — for each causal concept of the class, the discovered concept that localises
  it best: pointing game (tolerance 1/16 of the image side, 4 px at 64 px, as the demo), and that
  concept's relevance mass and IoU (map above its 90th percentile);
- **importance** — whether the top concept by each importance method localises a causal concept
  of the class (pointing game >= 0.5). Importance only changes the ranking, so discovery runs once
  per method and every importance method scores the same bank;
- **spurious cue** — on class 0, the concept that localises the cue in train images, its
  importance on train images vs on spurious-free test images (same bank, same ``h``), and on the
  same test images with the cue drawn in (the counterfactual), plus the model-level
  :func:`~conceptkit.datasets.spurious_cue_effect`.

Maps are ``ClassConcepts.concept_maps()`` (``kind="auto"``: coefficient maps for ICE, ACE's
segments painted back, and for CRAFT *scale-matched* coefficient maps: its concepts are learnt on
crops enlarged ``image / patch_size`` times (3.6x at 64 px), so the image is enlarged by the same
factor before its feature map is encoded). CRAFT is also scored with plain coefficient maps, which
miss some parts.

Run: ``python benchmarks/eval_ground_truth.py [--n-per-class 60] [--methods craft,ice,ace]
[--importances sobol,gradient_input] [--seed 0] [--quick] [--json results.json]``.

**World grid (issue 13).** ``--worlds all`` (or ``--worlds shapes,...``) instead scores every
discovery method x importance method x map kind on every ground-truth world with
:mod:`conceptkit.evaluate`, over ``--seeds``, plus a reference-CRAFT-style baseline, and prints
the mean and the worst world of each metric (see ``benchmarks/_world_grid.py``). Worlds other than
``shapes`` come from ``conceptkit.datasets.load_world`` (imported lazily; without it only
``shapes`` runs). Run: ``python benchmarks/eval_ground_truth.py --worlds all [--seeds 0,1,2]
[--n-per-class 30] [--methods craft,ice,ace] [--importances sobol,gradient_input,ablation,pixel_ablation]
[--n-concepts 10] [--split test] [--fill median] [--classes 0,4] [--no-deletion]
[--reliance-floor 0.0] [--quick]
[--markdown] [--json grid.json]``. ``--quick`` leaves ACE out and, with ``--worlds``, keeps at most
20 images per class and the first seed (it prints what it dropped).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from conceptkit import ClassConcepts, ConceptExplainer
from conceptkit.datasets import (
    ConceptDataset,
    add_concept,
    make_concept_dataset,
    reference_model,
    spurious_cue_effect,
)
from conceptkit.importance import ConceptImportance, concept_importance
from conceptkit.maps import localisation_table

LAYER = "block4"
N_CONCEPTS = 10
#: Pointing-game tolerance as a fraction of the image side (4 px at 64 px, as ``conceptkit demo``).
TOLERANCE_FRACTION = 1 / 16
#: A discovered concept "localises" a ground-truth concept at this pointing-game score.
LOCALISED = 0.5
METRICS = ("pointing_game", "relevance_mass", "iou")


def tolerance_for(image_size: int) -> int:
    """Pointing-game tolerance in pixels for images ``image_size`` wide."""
    return max(1, round(TOLERANCE_FRACTION * image_size))


def class_rows(data: ConceptDataset, class_id: int) -> np.ndarray:
    """Indices of the images of ``class_id``."""
    return np.flatnonzero(data.labels.numpy() == class_id)


def fit_class(model: torch.nn.Module, data: ConceptDataset, class_id: int, method: str,
              seed: int = 0, progress: bool = False) -> tuple[ClassConcepts, float]:
    """Explain ``class_id`` from its images with ``method`` (Sobol importance); ``(cc, seconds)``."""
    rows = class_rows(data, class_id)
    explainer = ConceptExplainer(model, LAYER, n_concepts=N_CONCEPTS, method=method,
                                 importance="sobol", seed=seed, progress=progress)
    start = time.perf_counter()
    cc = explainer.fit(data.images[rows], class_id, data.class_names[class_id])
    return cc, time.perf_counter() - start


def scale_matched_maps(cc: ClassConcepts) -> torch.Tensor:
    """CRAFT coefficient maps ``(N, k, H, W)`` with the image at the scale of the crops
    (``ClassConcepts.concept_maps(kind="scale_matched")``, the library's default for CRAFT).

    CRAFT resizes each ``p``-pixel crop to the image side ``S`` before ``g``, so its concepts
    describe parts enlarged ``S / p`` times; encoding the feature map of the image enlarged by the
    same factor compares like with like.
    """
    if cc.method != "craft" or not cc.bank.params.get("patch_size"):
        raise ValueError(f"scale-matched maps need a CRAFT explanation; got method {cc.method!r}.")
    return cc.concept_maps(kind="scale_matched")


def map_kinds(method: str) -> tuple[str, ...]:
    """The maps scored for a method: the default ones, and for CRAFT both plain coefficient maps
    and the scale-matched ones (its default)."""
    return ("coefficient", "scale_matched") if method == "craft" else ("auto",)


def concept_maps(cc: ClassConcepts, kind: str) -> torch.Tensor:
    """``(N, k, H, W)`` maps of the fitted images of kind ``kind`` (see ``map_kinds``)."""
    return scale_matched_maps(cc) if kind == "scale_matched" else cc.concept_maps(kind=kind)


def localisation_tables(maps: torch.Tensor, data: ConceptDataset,
                        rows: np.ndarray) -> dict[str, np.ndarray]:
    """``{metric: (k, G)}`` scores of every concept map against every ground-truth mask."""
    tolerance = tolerance_for(maps.shape[-1])
    out = {}
    for metric in METRICS:
        kwargs = {"tolerance": tolerance} if metric == "pointing_game" else {}
        out[metric] = localisation_table(maps, data.masks[rows], data.concepts[rows], metric=metric,
                                         **kwargs)
    return out


def class_importances(cc: ClassConcepts, methods: list[str], seed: int = 0,
                      activations: torch.Tensor | None = None) -> dict[str, ConceptImportance]:
    """Importance of the bank's concepts by each method, on the class activations (default) or on
    ``activations`` of other images of the class (same bank, same ``h``)."""
    out = {}
    for method in methods:
        if activations is None and cc.importance.method == method:
            out[method] = cc.importance  # the fit already scored it with this seed
            continue
        acts = cc.activations if activations is None else activations
        out[method] = concept_importance(cc.model_at_layer.h, acts, cc.bank, cc.class_id,
                                         method=method, seed=seed, progress=False)
    return out


def score_class(tables: dict[str, np.ndarray], importances: dict[str, ConceptImportance],
                data: ConceptDataset, class_id: int) -> dict[str, Any]:
    """Per causal concept its best discovered concept, and per importance method its top concept.

    ``mask_area`` (the mean fraction of the image a causal part covers) is the relevance mass of
    a uniform map: the chance level to read relevance mass against.
    """
    pg = tables["pointing_game"]
    rows = class_rows(data, class_id)
    causal = list(data.class_concepts[class_id])
    present = data.concepts[rows].numpy() > 0
    per_causal = []
    for g in causal:
        j = int(np.nanargmax(pg[:, g]))
        area = data.masks[rows[present[:, g]], g].float().mean()
        per_causal.append({"truth": data.concept_names[g], "concept": j, "mask_area": float(area),
                           **{metric: float(tables[metric][j, g]) for metric in METRICS}})
    # Ground-truth concepts shown in few class images (the cue outside class 0) give pointing
    # games over one or two images; they are left out when naming what a top concept shows.
    frequent = present.sum(0) >= max(3, 0.1 * len(rows))
    top = {}
    for method, imp in importances.items():
        j = int(imp.ranking[0])
        scores = np.where(frequent, np.nan_to_num(pg[j], nan=-1.0), -1.0)
        best_truth = int(np.argmax(scores))
        best_causal = max(causal, key=lambda g: scores[g])
        top[method] = {"concept": j, "best_truth": data.concept_names[best_truth],
                       "best_truth_score": float(scores[best_truth]),
                       "causal_truth": data.concept_names[best_causal],
                       "causal_score": float(scores[best_causal]),
                       "is_causal": bool(scores[best_causal] >= LOCALISED)}
    return {"class_id": class_id, "class_name": data.class_names[class_id],
            "n_concepts": int(pg.shape[0]), "causal": per_causal, "top": top,
            "all_causal_localised": all(row["pointing_game"] >= LOCALISED for row in per_causal)}


def spurious_summary(cc: ClassConcepts, pg: np.ndarray, train_cue_rate: float,
                     test: ConceptDataset, importance_methods: list[str],
                     seed: int = 0) -> dict[str, Any]:
    """How the concept that localises the cue ranks on train vs spurious-free test images.

    ``pg`` is the ``(k, G)`` pointing-game table of the class's train images; ``train_cue_rate``
    the fraction of them showing the cue.
    """
    cue = test.spurious_concept
    j = int(np.nanargmax(pg[:, cue]))
    class_test = test.subset(class_rows(test, cc.class_id))
    with_cue = add_concept(class_test, cue, seed=seed)
    sets = {"train": (cc.activations, None),
            "test": (cc.model_at_layer.activations(class_test.images), class_test),
            "test_with_cue": (cc.model_at_layer.activations(with_cue.images), with_cue)}
    out: dict[str, Any] = {"concept": j, "pointing_game": float(pg[j, cue]), "importance": {}}
    for method in importance_methods:
        rows = {}
        for name, (acts, _) in sets.items():
            imp = class_importances(cc, [method], seed, None if name == "train" else acts)[method]
            values = imp.importances
            rows[name] = {"value": float(values[j]),
                          "share": float(values[j] / values.sum()) if values.sum() > 0 else float("nan"),
                          "rank": int(np.flatnonzero(imp.ranking == j)[0]) + 1,
                          "per_image_top": float(np.mean(imp.per_input.argmax(1) == j))}
        rows["train_over_test"] = rows["train"]["value"] / max(rows["test"]["value"], 1e-12)
        out["importance"][method] = rows
    out["cue_rate"] = {"train": float(train_cue_rate),
                       "test": float(class_test.concepts[:, cue].mean()),
                       "test_with_cue": float(with_cue.concepts[:, cue].mean())}
    return out


def evaluate(n_per_class: int = 60, methods: tuple[str, ...] = ("craft", "ice", "ace"),
             importance_methods: tuple[str, ...] = ("sobol", "gradient_input"), seed: int = 0,
             progress: bool = False, log: Any = None) -> dict[str, Any]:
    """The whole evaluation; a JSON-ready dict (see the module docstring)."""
    importance_methods = list(importance_methods)
    model = reference_model()
    data = make_concept_dataset(n_per_class, seed=seed, split="train")
    test = make_concept_dataset(n_per_class, seed=seed, split="test")
    results: dict[str, Any] = {"setting": {"n_per_class": n_per_class, "seed": seed, "layer": LAYER,
                                           "n_concepts": N_CONCEPTS,
                                           "tolerance_px": tolerance_for(data.images.shape[-1])},
                               "methods": {}, "spurious": {}}
    for method in methods:
        per_kind: dict[str, list] = {kind: [] for kind in map_kinds(method)}
        timing = {"fit": 0.0, "importance": 0.0, "maps": {kind: 0.0 for kind in per_kind}}
        for class_id in range(data.n_classes):
            cc, seconds = fit_class(model, data, class_id, method, seed, progress)
            timing["fit"] += seconds
            start = time.perf_counter()
            importances = class_importances(cc, importance_methods, seed)
            timing["importance"] += time.perf_counter() - start
            rows = class_rows(data, class_id)
            for kind in per_kind:
                start = time.perf_counter()
                tables = localisation_tables(concept_maps(cc, kind), data, rows)
                timing["maps"][kind] += time.perf_counter() - start
                per_kind[kind].append(score_class(tables, importances, data, class_id))
                if class_id == data.spurious_class:
                    cue_rate = float(data.concepts[rows, data.spurious_concept].mean())
                    results["spurious"].setdefault(method, {})[kind] = spurious_summary(
                        cc, tables["pointing_game"], cue_rate, test, importance_methods, seed)
            if log:
                log(f"  {method} class {class_id}: {seconds:.1f} s ({cc.n_concepts} concepts)")
        results["methods"][method] = {"maps": per_kind, "seconds": timing}
    results["spurious_cue_effect"] = spurious_cue_effect(model, test, seed=seed)
    return results


def rates(classes: list[dict], importance_methods: list[str]) -> dict[str, Any]:
    """Counts over classes: causal concepts localised, classes fully localised, top concept causal."""
    pairs = [row for cls in classes for row in cls["causal"]]
    out = {"causal_localised": (sum(r["pointing_game"] >= LOCALISED for r in pairs), len(pairs)),
           "classes_all_localised": (sum(c["all_causal_localised"] for c in classes), len(classes)),
           "mean_pointing_game": float(np.mean([r["pointing_game"] for r in pairs])),
           "mean_relevance_mass": float(np.mean([r["relevance_mass"] for r in pairs])),
           "mean_iou": float(np.mean([r["iou"] for r in pairs])),
           "mean_mask_area": float(np.mean([r["mask_area"] for r in pairs]))}
    for method in importance_methods:
        out[f"top_{method}_causal"] = (sum(c["top"][method]["is_causal"] for c in classes),
                                       len(classes))
    return out


def print_report(results: dict[str, Any], importance_methods: list[str]) -> None:
    setting = results["setting"]
    print(f"Reference CNN at {setting['layer']}, {setting['n_per_class']} train images per class, "
          f"{setting['n_concepts']} concepts, seed {setting['seed']}; pointing game (PG) tolerance "
          f"{setting['tolerance_px']} px; localised = PG >= {LOCALISED}.")
    for method, entry in results["methods"].items():
        seconds = entry["seconds"]
        for kind, classes in entry["maps"].items():
            label = {"auto": "default maps", "coefficient": "coefficient maps",
                     "scale_matched": "scale-matched maps, the default"}[kind]
            print(f"\n== {method.upper()} ({label}) — fit {seconds['fit']:.1f} s, other importances "
                  f"{seconds['importance']:.1f} s, maps + scores {seconds['maps'][kind]:.1f} s")
            header = "".join(f" | top {m:<24}" for m in importance_methods)
            print(f"   {'class':<36} k  {'causal concept':<19} best   PG    RM (area)  IoU{header}")
            for cls in classes:
                for i, row in enumerate(cls["causal"]):
                    name = f"{cls['class_id']} {cls['class_name']}" if i == 0 else ""
                    k = f"{cls['n_concepts']:>2}" if i == 0 else "  "
                    tops = ""
                    for m in importance_methods:
                        top = cls["top"][m]
                        text = (f"c{top['concept']} {top['causal_truth']} {top['causal_score']:.2f}"
                                if top["is_causal"] else
                                f"c{top['concept']} NOT causal ({top['best_truth']} "
                                f"{top['best_truth_score']:.2f})") if i == 0 else ""
                        tops += f" | {text:<28}"
                    print(f"   {name:<36} {k} {row['truth']:<19} c{row['concept']:<4}"
                          f"{row['pointing_game']:5.2f} {row['relevance_mass']:5.2f} "
                          f"({row['mask_area']:.2f}) {row['iou']:5.2f}{tops}")
            r = rates(classes, importance_methods)
            tops = ", ".join(f"{m} {r[f'top_{m}_causal'][0]}/{r[f'top_{m}_causal'][1]}"
                             for m in importance_methods)
            print(f"   causal concepts localised: {r['causal_localised'][0]}/{r['causal_localised'][1]}"
                  f"; classes with every causal concept localised: "
                  f"{r['classes_all_localised'][0]}/{r['classes_all_localised'][1]}; "
                  f"top concept is causal: {tops}")
            print(f"   mean over causal concepts: PG {r['mean_pointing_game']:.2f}, relevance mass "
                  f"{r['mean_relevance_mass']:.2f} (uniform map: {r['mean_mask_area']:.2f}), "
                  f"IoU {r['mean_iou']:.2f}")
    print("\n== Spurious cue (class 0): the concept that localises the cue, on train images vs "
          "spurious-free test images (and the same test images with the cue drawn in)")
    for method, kinds in results["spurious"].items():
        for kind, entry in kinds.items():
            rate = entry["cue_rate"]
            label = {"auto": "default", "coefficient": "coefficient",
                     "scale_matched": "scale-matched"}.get(kind, kind)
            print(f"   {method} ({label} maps): cue concept "
                  f"c{entry['concept']} (PG {entry['pointing_game']:.2f}); cue in "
                  f"{rate['train']:.0%} train / {rate['test']:.0%} test / "
                  f"{rate['test_with_cue']:.0%} test+cue images")
            for m, rows in entry["importance"].items():
                parts = [f"{name} {rows[name]['value']:.4f} (rank {rows[name]['rank']}, share "
                         f"{rows[name]['share']:.2f}, per-image top {rows[name]['per_image_top']:.2f})"
                         for name in ("train", "test", "test_with_cue")]
                print(f"     {m:<15} " + "; ".join(parts) + f"; train/test {rows['train_over_test']:.1f}x")
    effect = results["spurious_cue_effect"]
    print("   model level (spurious_cue_effect on the test split): "
          + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in effect.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-per-class", type=int, default=None,
                        help="images per class (default 60; 30 with --worlds)")
    parser.add_argument("--methods", default="craft,ice,ace")
    parser.add_argument("--importances", default=None,
                        help="default sobol,gradient_input (with --worlds: sobol,gradient_input,"
                             "ablation,pixel_ablation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="ACE left out (it takes most of the time); 30 images per class, or "
                             "with --worlds at most 20 images per class and the first of "
                             "--seeds only (what it drops is printed)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--progress", action="store_true")
    grid = parser.add_argument_group("world grid (issue 13)")
    grid.add_argument("--worlds", default=None, help="'all' or comma-separated world names "
                      "(name:arch for another shipped model, name:arch@PATH for a model file "
                      "from train_world --out)")
    grid.add_argument("--seeds", default="0,1,2")
    grid.add_argument("--n-concepts", type=int, default=N_CONCEPTS)
    grid.add_argument("--split", default="test")
    grid.add_argument("--fill", default="median")
    grid.add_argument("--classes", default=None, help="comma-separated class ids (default all)")
    grid.add_argument("--no-deletion", action="store_true", help="skip the deletion curves")
    grid.add_argument("--kinds", default=None,
                      help="comma-separated map kinds to score (default every kind of each "
                           "method; 'auto' is the one the library picks)")
    grid.add_argument("--extra-kinds", default="",
                      help="comma-separated map kinds outside the library to score too "
                           "(_world_grid.EXTRA_KINDS)")
    grid.add_argument("--reliance-floor", type=float, default=0.0,
                      help="reliance within +-this counts as 0 in the correlations")
    grid.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    if args.n_per_class is not None and args.n_per_class < 1:
        parser.error(f"--n-per-class must be >= 1; got {args.n_per_class}")
    if args.worlds:
        return _main_grid(parser, args)
    from conceptkit.importance._concept import METHODS as IMPORTANCE_METHODS
    from conceptkit.pipeline._explainer import DISCOVERY_METHODS

    args.n_per_class = args.n_per_class or 60
    args.importances = args.importances or "sobol,gradient_input"
    methods = _names(parser, "--methods", args.methods, DISCOVERY_METHODS)
    importance_methods = _names(parser, "--importances", args.importances, IMPORTANCE_METHODS)
    if args.quick:
        dropped = [m for m in methods if m == "ace"]
        methods = [m for m in methods if m != "ace"] or ["ice"]
        print(f"# --quick: 30 images per class (asked: {args.n_per_class})"
              + (f"; left out {dropped}" if dropped else "") + f"; methods {methods}")
        args.n_per_class = 30
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    results = evaluate(args.n_per_class, tuple(methods), tuple(importance_methods), args.seed,
                       progress=args.progress, log=print)
    results["seconds"] = time.perf_counter() - start
    print_report(results, importance_methods)
    print(f"\nTotal {results['seconds']:.0f} s.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1, default=float)
    return 0


def _names(parser: argparse.ArgumentParser, flag: str, value: str, choices) -> list[str]:
    """The comma-separated names of ``value``, each one of ``choices`` (else ``parser.error``:
    one line, exit 2, before any work)."""
    names = [name for name in value.split(",") if name]
    unknown = [name for name in names if name not in choices]
    if unknown or not names:
        parser.error(f"{flag}: unknown {unknown or value!r}; choose from {list(choices)}")
    return names


def _integers(parser: argparse.ArgumentParser, flag: str, value: str) -> list[int]:
    try:
        return [int(item) for item in value.split(",")]
    except ValueError:
        parser.error(f"{flag}: comma-separated integers expected; got {value!r}")


def _main_grid(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``--worlds``: the issue-13 grid (``benchmarks/_world_grid.py``)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _world_grid as grid

    from conceptkit.datasets._generate import SPLITS
    from conceptkit.evaluate import FILLS
    from conceptkit.importance._concept import METHODS as IMPORTANCE_METHODS

    # every flag checked before any work: one line and exit 2 for a bad value
    methods = _names(parser, "--methods", args.methods, grid.KINDS)
    importances = _names(parser, "--importances",
                         args.importances or "sobol,gradient_input,ablation,pixel_ablation",
                         [*IMPORTANCE_METHODS, *grid.PIXEL_METHODS, *grid.PIXEL_VARIANTS])
    seeds = _integers(parser, "--seeds", args.seeds)
    classes = None if args.classes is None else _integers(parser, "--classes", args.classes)
    if classes is not None and min(classes) < 0:
        parser.error(f"--classes: class ids are >= 0; got {args.classes!r}")
    extra_kinds = [k for k in args.extra_kinds.split(",") if k]
    unknown = sorted(set(extra_kinds) - set(grid.EXTRA_KINDS))
    if unknown:
        parser.error(f"--extra-kinds: unknown {unknown}; choose from {list(grid.EXTRA_KINDS)}")
    kinds = None if args.kinds is None else _names(
        parser, "--kinds", args.kinds,
        ["auto", *dict.fromkeys(k for ks in grid.KINDS.values() for k in ks), *extra_kinds])
    if args.split not in SPLITS:
        parser.error(f"--split: unknown {args.split!r}; choose from {list(SPLITS)}")
    if args.fill not in FILLS:
        parser.error(f"--fill: unknown {args.fill!r}; choose from {list(FILLS)}")
    if args.n_concepts < 1:
        parser.error(f"--n-concepts must be >= 1; got {args.n_concepts}")
    known = grid.world_names()
    if args.worlds != "all" and known is not None:
        for spec in (w.strip() for w in args.worlds.split(",") if w.strip()):
            if spec.split(":", 1)[0] not in known:
                parser.error(f"--worlds: unknown world {spec.split(':', 1)[0]!r}; choose from "
                             f"{known} or 'all' (name:arch@PATH for a model file)")
    n_per_class = args.n_per_class or 30
    if args.quick:
        dropped = {"seeds": seeds[1:], "methods": [m for m in methods if m == "ace"]}
        asked = n_per_class
        n_per_class, seeds = min(n_per_class, 20), seeds[:1]
        methods = [m for m in methods if m != "ace"] or ["ice"]
        print(f"# --quick: {n_per_class} images per class (asked: {asked}), seed {seeds[0]} only"
              + "".join(f"; left out {name} {values}" for name, values in dropped.items()
                        if values))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    setting = {"worlds": args.worlds, "seeds": seeds, "n_per_class": n_per_class,
               "n_concepts": args.n_concepts, "split": args.split, "fill": args.fill,
               "methods": methods, "importances": importances, "classes": classes,
               "deletion": not args.no_deletion, "reliance_floor": args.reliance_floor,
               "extra_kinds": extra_kinds, "kinds": kinds}
    start = time.perf_counter()
    worlds = grid.resolve_worlds(args.worlds)
    results = grid.run_grid(worlds, seeds, methods, importances, n_per_class, args.n_concepts,
                            args.split, args.fill, not args.no_deletion, classes, log=print,
                            reliance_floor=args.reliance_floor, extra_kinds=extra_kinds,
                            kinds=kinds)
    results["setting"] = setting
    grid.print_grid(results, setting)
    if args.markdown:
        print("\n" + grid.markdown(results))
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
