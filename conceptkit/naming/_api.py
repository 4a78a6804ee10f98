"""``name_concepts`` and the three ways of naming: by masks, by CLIP, by the model's classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import check_choice, check_float, check_int, describe
from ..extraction._windows import refuse_cls_concepts
from ._classes import default_class_names, excluded_classes, logit_gains
from ._clip import SIMILARITIES, active_inputs, cos_cubed, default_top_k, soft_wpmi
from ._dissect import SMALL_PART_SHARE, dissect
from ._probe import SUMMARIES, ConceptSource, Probe, as_probe, crop_probe
from ._table import SCORES, ConceptName, ConceptNames
from ._trust import CHANCE, trust_scores
from ._vocab import vocabulary as resolve_vocabulary

METHODS = ("dissect", "clip", "classes")


def _table(method: str, scores: np.ndarray, candidates: list[str], *, score_name: str,
           min_score: float | None, n_runner_ups: int, params: dict[str, Any],
           summaries: np.ndarray | None = None, targets: dict[str, np.ndarray] | None = None,
           descriptions: list[str | None] | None = None,
           allowed: np.ndarray | None = None, positive_only: bool = False,
           unnamed: dict[int, str] | None = None, shares: np.ndarray | None = None,
           notes: list[str] | None = None) -> ConceptNames:
    """Names from a ``(k, M)`` score table over ``candidates`` (higher is better); with
    ``positive_only`` a best score of 0 or less names nothing and the runner-ups leave out
    candidates scoring 0 or less (IoU 0: no overlap). ``unnamed``: concepts whose scores mean
    nothing, with the reason (they get no name, a NaN score and no runner-ups; the reason goes
    to the notes). ``shares``: ``(k, M)`` share of each concept's top pixels on each candidate
    (``"dissect"``), recorded for the best one; a name resting on less than
    :data:`SMALL_PART_SHARE` of them gets a note."""
    n_runner_ups = check_int(n_runner_ups, "n_runner_ups", minimum=0)
    scores = np.asarray(scores, dtype=np.float64)
    ranked = np.where(allowed[None, :], scores, -np.inf) if allowed is not None else scores
    unnamed = unnamed or {}
    notes = list(notes or [])
    names, best_scores, others, glosses, best_shares = [], [], [], [], []
    for j in range(scores.shape[0]):
        if j in unnamed:
            names.append(None)
            best_scores.append(float("nan"))
            glosses.append(None)
            others.append(())
            best_shares.append(None)
            notes.append(f"concept {j} stays unnamed: {unnamed[j]}.")
            continue
        order = np.argsort(-ranked[j], kind="stable")
        order = order[np.isfinite(ranked[j, order])]
        best = int(order[0])
        value = float(scores[j, best])
        keep = (min_score is None or value > min_score) and (not positive_only or value > 0)
        names.append(candidates[best] if keep else None)
        best_scores.append(value)
        glosses.append(None if descriptions is None or not keep else descriptions[best])
        rest = [int(i) for i in order[1:] if not positive_only or scores[j, int(i)] > 0]
        others.append(tuple((candidates[i], float(scores[j, i])) for i in rest[:n_runner_ups]))
        best_shares.append(None if shares is None else float(shares[j, best]))
        if keep and shares is not None and shares[j, best] < SMALL_PART_SHARE:
            notes.append(f"concept {j} ({candidates[best]!r}, {score_name} {value:.3g}): only "
                         f"{shares[j, best]:.0%} of its top pixels lie on the part, the rest "
                         f"elsewhere; the name describes a small share of where it fires.")
    trust = ([None] * len(names) if summaries is None or not targets
             else trust_scores(summaries, names, targets))
    notes += _below_chance_notes(names, trust, params)
    entries = tuple(ConceptName(concept=j, name=names[j], score=best_scores[j],
                                runner_ups=others[j], trust=trust[j], description=glosses[j],
                                part_share=best_shares[j])
                    for j in range(len(names)))
    return ConceptNames(method=method, entries=entries, score_name=score_name, params=params,
                        notes=tuple(notes))


def _below_chance_notes(names: list[str | None], trust: list[float | None],
                        params: dict[str, Any]) -> list[str]:
    """A note for each name whose trust is below chance: the name is kept (a concept is named
    by its score, ``min_score``) and flagged, as :attr:`ConceptName.below_chance`."""
    where = (" The name was found on the explained class's images alone "
             "(class_images_only) and the trust is measured over the whole probe: the concept "
             "may stand for something else in other classes' images "
             "(class_images_only=False names it across all classes)."
             if params.get("class_images_only") else "")
    return [f"concept {j} ({name!r}) has trust {value:.2f}, below chance (0.5): over the "
            f"probe, inputs that show {name!r} activate it less than those that do not.{where}"
            for j, (name, value) in enumerate(zip(names, trust))
            if name is not None and value is not None and value < CHANCE]


def _class_rows(source: ConceptSource, probe: Probe, class_images_only: bool | None) -> Probe:
    """The probe images of the explained class (see ``class_images_only``)."""
    if class_images_only is not None and not isinstance(class_images_only, (bool, np.bool_)):
        raise TypeError(f"`class_images_only` must be True, False or None (decide from the "
                        f"probe); got {describe(class_images_only)}.")
    if class_images_only is None:
        class_images_only = source.class_id is not None and probe.labels is not None \
            and bool((probe.labels == source.class_id).any())
    if not class_images_only:
        return probe
    if source.class_id is None or probe.labels is None:
        raise ValueError("`class_images_only=True` needs a class explanation and a probe with "
                         "class labels (a ConceptDataset).")
    rows = np.flatnonzero(probe.labels == source.class_id)
    if rows.size == 0:
        raise ValueError(f"the probe has no image of class {source.class_id}; pass "
                         f"class_images_only=False or a probe that has some.")
    return probe.subset(rows)


def name_by_masks(concepts: Any, probe: Any, *, model: nn.Module | None = None,
                  preprocess: Callable | None = None, quantile: Any = "auto",
                  class_images_only: bool | None = None, min_score: float | None = 0.04,
                  min_images: int = 3, summary: str = "max", kind: str = "coefficient",
                  n_runner_ups: int = 3, batch_size: int = 64,
                  progress: bool = False) -> ConceptNames:
    """Network Dissection: name each concept after the part whose masks its maps match best.

    Parameters
    ----------
    concepts : ClassConcepts or ConceptBank
        A class explanation (with its model attached), or a bank with ``model``.
    probe : ConceptDataset or (images, masks, names)
        Probe images with part masks ``(N, G, H, W)`` and the G part names.
    model, preprocess : optional
        The model (and its input normalisation) for a bare ConceptBank.
    quantile : float or "auto"
        Top fraction of each concept's probe pixels kept as its binary map (the paper: 0.005);
        ``"auto"``: the parts' mean pixel share in the probe (see :mod:`._dissect`).
    class_images_only : bool, optional
        Probe only the images of the explained class (default: yes for a class explanation when
        the probe has labels and images of that class — its concepts describe that class).
    min_score : float, optional
        Below this IoU the concept stays unnamed (0.04, the paper's detector threshold).
    min_images : int
        A part shown in fewer probe images (of those probed) cannot name a concept, nor enter
        the automatic quantile (3, as :func:`conceptkit.evaluate.localisation`): for a part
        much smaller than the binary map, IoU is about the part's area over the map's, so a part
        seen once can pass ``min_score`` with nearly all of the concept's top pixels elsewhere.
        The notes list the parts left out.
    summary : {"max", "mean"}
        Image-level activation used for the trust score (AUC of images with the part vs without).
    kind : str
        The concept maps compared with the masks, as ``ClassConcepts.concept_maps(kind=)``:
        ``"coefficient"`` (default: the concept's activation map, as network dissection reads a
        unit's; the kind the naming benchmarks were measured with), ``"auto"`` (the
        explanation's display default: pixel maps for CRAFT and ICE on convolutional layers,
        coefficient maps on transformer tokens) or e.g.
        ``"scale_matched"`` (CRAFT: the probe image enlarged to the crops' scale), which
        localises parts much smaller than the crops better. A bare bank: coefficient maps.

    Returns
    -------
    ConceptNames
        Score = IoU; trust = AUC on the probe; ``part_share`` = the share of the concept's top
        pixels on the named part (``notes`` flag shares below a quarter).
    """
    source = ConceptSource(concepts, model, preprocess=preprocess, batch_size=batch_size,
                           progress=progress)
    summary = check_choice(summary, "summary", SUMMARIES)
    min_images = check_int(min_images, "min_images", minimum=1)
    full = as_probe(probe, need_masks=True)
    probe = _class_rows(source, full, class_images_only)
    if min_score is not None:
        min_score = check_float(min_score, "min_score")
    maps = full_maps = source.maps(full.images, kind)
    if probe is not full:
        maps = full_maps[torch.as_tensor(probe.rows)]
    found = dissect(maps, probe, quantile, min_images)
    # trust: the whole probe, so that images without the part are there to compare with
    summaries = source.summaries(full.images, summary, maps=full_maps)
    params = {"quantile": found.quantile, "n_probe_images": len(probe), "summary": summary,
              "kind": kind, "min_score": min_score, "min_images": min_images,
              "class_images_only": probe is not full}
    rare = [f"{name} ({int(n)})" for name, n in zip(probe.part_names, found.shown)
            if 0 < n < min_images]
    notes = [] if not rare else [
        f"parts shown in fewer than min_images={min_images} of the {len(probe)} probe images "
        f"name no concept (images showing each): {', '.join(rare)}."]
    unnamed = {int(j): "its map is constant over the probe images, so no pixel stands out"
               for j in np.flatnonzero(found.constant)}
    return _table("dissect", found.iou, list(probe.part_names), score_name=SCORES["dissect"],
                  min_score=min_score, n_runner_ups=n_runner_ups, params=params,
                  summaries=summaries, targets=full.targets(), positive_only=True,
                  allowed=found.allowed, unnamed=unnamed, shares=found.share, notes=notes)


def name_by_clip(concepts: Any, probe: Any, clip: Any, *, vocabulary: Any = "imagenet",
                 similarity: str = "soft_wpmi", template: str = "{}",
                 model: nn.Module | None = None, preprocess: Callable | None = None,
                 patch_size: Any = "auto", stride: int | None = None,
                 crop_activation: str = "auto", kind: str = "coefficient",
                 class_images_only: bool | None = None, summary: str = "mean",
                 min_score: float | None = None, n_runner_ups: int = 3,
                 cache_dir: Any = None, batch_size: int = 64, progress: bool = False,
                 **similarity_kwargs: Any) -> ConceptNames:
    """CLIP-Dissect: name each concept by the word whose CLIP similarities follow its activations.

    Parameters
    ----------
    concepts : ClassConcepts or ConceptBank
        All concepts are named together (soft-WPMI's word prior is taken over them).
    probe : images (N, 3, H, W) or ConceptDataset
        Probe images; a ConceptDataset also gives the trust scores (AUC) of part and class names.
    clip : ClipEncoders, (open_clip model, tokenizer) or any object with ``encode_image`` and
        ``encode_text(list[str])``.
    vocabulary : "imagenet", "imagenet21k" or list of str
        Candidate names (see :func:`vocabulary`).
    similarity : {"soft_wpmi", "cos3"}
        soft-WPMI (CLIP-Dissect's; ``top_k``, ``a=10``, ``lam=1``, ``prior`` via
        ``similarity_kwargs``, see :func:`soft_wpmi`) or cubed cosine.
    template : str
        Prompt for each word, e.g. ``"a photo of a {}"`` (default: the bare word).
    patch_size : int, None or "auto"
        Probe with square crops of this side (stride ``stride``, default 0.8 of it) instead of
        whole images; CLIP sees each crop. ``"auto"``: the bank's patch size for CRAFT concepts,
        which describe crops; CRAFT's default crop (64/224 of the side) for ICE concepts with
        ``crop_activation="map"`` (one position's concept seen in a crop, not among a whole
        image's parts: on the context world ICE's causal parts are named right 7/8 from crops
        against 2/8 from whole images); whole images otherwise.
    crop_activation : {"auto", "map", "resized"}
        A crop's concept activation. ``"map"``: the mean of the concept's map (``kind``) over the
        crop's box, the map computed on the whole probe image — the concept at the scale it was
        found. ``"resized"``: CRAFT's code of the crop (``g`` on the crop resized to the model's
        input, spatial mean, encode). ``"auto"`` (default): ``"map"`` where the layer gives
        feature maps, ``"resized"`` where it does not (pooled or token-less layers have no
        maps); ``params["crop_activation"]`` records which ran. Why ``"map"``: resizing magnifies the crop (×3.5
        for CRAFT's default crops of 64-pixel images), and a concept found at the image's scale can
        fire on magnified background; on the textures world the zigzag concept's 24 most active
        resized crops held almost no zigzag. With the synthetic CLIP of
        ``benchmarks/eval_naming.py``, ``"map"`` names 8/8 causal parts right on textures and on
        scales, ``"resized"`` 4/8 and 6/8 (BENCHMARKS.md, "Naming").
    kind : str
        Map kind for ``crop_activation="map"`` (a kind of ``ClassConcepts.concept_maps``;
        default ``"coefficient"``, as for :func:`name_by_masks`; ``"auto"``: the explanation's
        display default).
    class_images_only : bool, optional
        Probe only the explained class's images (default: as :func:`name_by_masks`). Off, the
        concepts of one class are also judged by what they respond to in other classes' images,
        which is often a different part than the one they stand for in their class.
    summary : {"mean", "max"}
        Image-level activation of a concept (CLIP-Dissect uses the mean of a conv map); whole
        images only.

    A setting the probing cannot use is refused (``ValueError`` naming it) rather than
    ignored: ``summary`` with crops, ``stride`` or ``crop_activation`` with whole images,
    ``kind`` where no map is read. ``params`` records None for settings that did not apply.
    """
    from ..bottleneck import ClipEncoders  # the CLIP adapter and its text-embedding cache
    from ..bottleneck._clip import check_template
    from ..maps import MAP_KINDS

    source = ConceptSource(concepts, model, preprocess=preprocess, batch_size=batch_size,
                           progress=progress)
    similarity = check_choice(similarity, "similarity", SIMILARITIES)
    summary = check_choice(summary, "summary", SUMMARIES)
    asked_activation = crop_activation = check_choice(crop_activation, "crop_activation",
                                                      CROP_ACTIVATIONS)
    kind = check_choice(kind, "kind", MAP_KINDS)
    template = check_template(template)
    if min_score is not None:
        min_score = check_float(min_score, "min_score")
    words = resolve_vocabulary(vocabulary)
    encoders = ClipEncoders.wrap(clip)
    probe = _class_rows(source, as_probe(probe), class_images_only)
    spatial = source.spatial(probe.images)
    if crop_activation == "auto":
        crop_activation = "map" if spatial else "resized"
    elif crop_activation == "map" and patch_size is not None and not spatial:
        raise ValueError(f"`crop_activation`='map' reads crops from the concepts' maps, but layer "
                         f"{source.bank.layer!r} gives no spatial feature maps (its activations "
                         f"are (N, C)); use crop_activation='resized' or 'auto'.")
    asked_size = patch_size
    if patch_size == "auto":
        if source.bank.method == "craft":
            patch_size = source.bank.params.get("patch_size")
        elif source.bank.method == "ice" and crop_activation == "map":
            from ..concepts._methods import default_patch_size

            patch_size = default_patch_size(probe.images.shape[-2:])
        else:
            patch_size = None
    # patch_size='auto' of ICE concepts reads crops for crop_activation='map' and whole images
    # for 'resized': there crop_activation chose how the probe is read
    chose = asked_size == "auto" and source.bank.method == "ice"
    _refuse_unused(asked_size, patch_size, stride, asked_activation if not chose else "auto",
                   crop_activation, kind, summary, spatial)
    if patch_size is not None:
        cut = crop_probe(probe, check_int(patch_size, "patch_size", minimum=1), stride)
        stride = int(cut.crops.stride)  # the crops' stride, as used (default: 0.8 of a side)
        if crop_activation == "map":
            activations = torch.as_tensor(source.crop_map_means(probe.images, cut.crops, kind,
                                                                batch_size=batch_size))
        else:
            activations = torch.as_tensor(source.crop_codes(cut.crops))
        image_emb = encoders.image_embeddings(cut.raw.images, progress=progress)
        targets = cut.targets
    else:
        activations = torch.as_tensor(source.summaries(probe.images, summary, kind=kind))
        image_emb = encoders.image_embeddings(probe.images, progress=progress)
        targets = probe.targets()
    if activations.shape[0] < 2:
        raise ValueError(f"`probe` gives {activations.shape[0]} image; CLIP naming needs several.")
    if not bool(torch.isfinite(activations).all()):  # soft-WPMI's top inputs would mean nothing
        bad = torch.nonzero(~torch.isfinite(activations).all(0)).flatten().tolist()
        raise ValueError(f"the activations of concepts {bad} on the probe inputs hold NaN or "
                         f"infinite values: check the model's activations on these images.")
    text_emb = encoders.text_embeddings(words, template=template, cache_dir=cache_dir,
                                        progress=progress)
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"`clip` gives image embeddings of width {image_emb.shape[1]} and text "
                         f"embeddings of width {text_emb.shape[1]}; they must share one space.")
    for what, emb in (("image", image_emb), ("text", text_emb)):
        if not bool(torch.isfinite(emb).all()):  # a NaN row would name nothing, deep inside
            raise ValueError(f"`clip` gives non-finite {what} embeddings (NaN or Inf).")
    sims = image_emb.double() @ text_emb.double().T
    if similarity == "soft_wpmi":
        if (source.n_concepts < 2 and similarity_kwargs.get("prior") == "concepts"
                and similarity_kwargs.get("lam", 1.0) != 0):
            raise ValueError("soft-WPMI's word prior is taken over the concepts named together; "
                             "with one concept every score is 0. Use similarity='cos3' or lam=0.")
        table = soft_wpmi(sims, activations, **similarity_kwargs)
    else:
        if similarity_kwargs:
            raise TypeError(f"similarity='cos3' takes no extra arguments; got "
                            f"{sorted(similarity_kwargs)}.")
        table = cos_cubed(sims, activations)
    crops = patch_size is not None
    maps_read = spatial and (not crops or crop_activation == "map")
    # the settings that ran, None where one did not apply (whole images have no crop reading,
    # crops no image summary, codes of resized crops or of a flat layer no map kind)
    params = {"similarity": similarity, "template": template, "n_words": len(words),
              "vocabulary": vocabulary if isinstance(vocabulary, str) else "user list",
              "summary": None if crops else summary, "n_probe_images": len(probe),
              "clip": encoders.model_id, "patch_size": patch_size,
              "n_probe_inputs": int(activations.shape[0]),
              "crop_activation": crop_activation if crops else None,
              "stride": stride if crops else None, "kind": kind if maps_read else None,
              **{k: v for k, v in similarity_kwargs.items() if isinstance(v, (int, float))}}
    score_name = SCORES["clip"] if similarity == "soft_wpmi" else SCORES["clip_cos3"]
    # a concept whose activation is the same on every probe input has no top inputs (soft-WPMI
    # would take the first ones, cos³ scores every word 0 and names the first word)
    values = activations.double()
    spread = values.amax(0) - values.amin(0)
    flat = spread <= 1e-12 * values.abs().amax(0)
    what = "crop" if patch_size is not None else "image"
    unnamed = {int(j): f"its activation is the same ({float(values[0, j]):.3g}) on all "
                       f"{values.shape[0]} probe {what}s, so no {what} shows it more than another"
               for j in torch.nonzero(flat).flatten().tolist()}
    notes = []
    if similarity == "soft_wpmi":  # a top set of the inputs where the concept is active only
        n_inputs = values.shape[0]
        top_k = similarity_kwargs.get("top_k")
        top_k = min(default_top_k(n_inputs) if top_k is None else int(top_k), n_inputs)
        active = active_inputs(values).sum(0)
        notes = [f"concept {j} is active (not at its floor: 0 or below, or a lowest value "
                 f"several share) on only {int(active[j])} "
                 f"of the {n_inputs} probe {what}s, fewer than top_k={top_k}: soft-WPMI scored "
                 f"it on those {int(active[j])}, and its name rests on them."
                 for j in range(values.shape[1]) if j not in unnamed and active[j] < top_k]
    return _table("clip", table.numpy(), words, score_name=score_name, min_score=min_score,
                  n_runner_ups=n_runner_ups, params=params,
                  summaries=activations.numpy(), targets=targets, unnamed=unnamed, notes=notes)


def _refuse_unused(asked_size: Any, patch_size: int | None, stride: Any, asked_activation: str,
                   crop_activation: str, kind: str, summary: str, spatial: bool) -> None:
    """Refuse a setting of :func:`name_by_clip` that the probing it resolved to cannot use
    (it would be ignored, and recorded as if it had run)."""
    auto = " (patch_size='auto' resolved to {})".format(
        "whole images" if patch_size is None else f"crops of {patch_size} pixels") \
        if asked_size == "auto" else ""
    if patch_size is None:
        if stride is not None:
            raise ValueError(f"`stride` spaces the crops, and the probe is read as whole "
                             f"images{auto}: pass `patch_size` with it, or leave `stride` out.")
        if asked_activation != "auto":
            raise ValueError(f"`crop_activation` says how a crop's activation is read, and the "
                             f"probe is read as whole images{auto}: pass `patch_size` with it, "
                             f"or leave `crop_activation` out.")
        if not spatial and summary != "mean":
            raise ValueError("`summary` pools a concept's map over an image, and this layer "
                             "gives no feature maps (one code per image): leave `summary` out.")
    elif summary != "mean":
        raise ValueError(f"`summary` pools a concept's map over a whole image, and the probe is "
                         f"read as crops{auto}, each with the activation `crop_activation` "
                         f"reads: leave `summary` out, or pass patch_size=None.")
    maps_read = spatial and (patch_size is None or crop_activation == "map")
    if not maps_read and kind != "coefficient":
        why = ("this layer gives no feature maps" if not spatial else
               "crop_activation='resized' codes each resized crop and reads no map")
        raise ValueError(f"`kind` {kind!r} picks the concept maps read, and {why}: leave `kind` "
                         f"out, or use crop_activation='map'.")


def name_by_classes(concepts: Any, images: Any = None, *, model: nn.Module | None = None,
                    preprocess: Callable | None = None, class_names: list[str] | None = None,
                    exclude: Any = "own", probe: Any = None, summary: str = "max",
                    min_score: float | None = 0.0, n_runner_ups: int = 3,
                    batch_size: int = 64, progress: bool = False) -> ConceptNames:
    """Name each concept by the classes its direction pushes most through ``h``.

    Parameters
    ----------
    concepts : ClassConcepts or ConceptBank
    images : (N, 3, H, W), optional
        Images whose activations the concept is added back to; default the explanation's own
        class images (required with a ConceptBank).
    class_names : list of str, optional
        One per model output; default ImageNet's for 1000 outputs (with timm's WordNet
        definitions as descriptions), ``"class i"`` otherwise.
    exclude : "own", None or list of int
        Classes never given as names; ``"own"`` leaves out the explained class.
    probe : ConceptDataset, optional
        Labelled probe images for the trust score: AUC of the concept's activation on images of
        the named class vs the others.
    min_score : float, optional
        A concept whose best gain is not above this stays unnamed (0: it pushes no class up).
    """
    from ..extraction import split_model
    from ..extraction._extractor import TokenHead

    source = ConceptSource(concepts, model, preprocess=preprocess, batch_size=batch_size,
                           progress=progress)
    summary = check_choice(summary, "summary", SUMMARIES)
    if isinstance(class_names, (list, tuple)):  # before the gains: a blank name is plain now
        blank = [i for i, n in enumerate(class_names) if not str(n).strip()]
        if blank:  # a concept named so could not be saved (a name is never empty)
            raise ValueError(f"`class_names` has empty or blank names at outputs {blank}; give "
                             f"every output a name (e.g. 'class {blank[0]}').")
    context = None
    if images is None:
        result = source.result
        if result is None or result.activations is None:
            what = ("this explanation was loaded without its activations"
                    if result is not None else "a ConceptBank holds no images")
            raise ValueError(f"naming by classes adds each concept back to the activations of "
                             f"images, and {what}: pass the class's images as `images`, e.g. "
                             f"name_concepts('classes', images=class_images) (a loaded "
                             f"explanation needs its model too: attach(model) first).")
        acts, context = result.activations, result.context
        if result.model_at_layer is None:
            raise ValueError("naming by classes needs the model: call `attach(model)` first.")
        h = result.model_at_layer.maps_head
    else:
        from .._validation import check_images
        from ..extraction import ActivationExtractor

        images = check_images(images, "images", channels=3, pixels=True)
        # the layer's patch tokens of new images would be encoded with a dictionary of CLS
        # tokens (an explanation with tokens="cls"): refused, as for a bare bank
        refuse_cls_concepts(source.bank, "naming by classes with `images`")
        net = source.require_model("naming by classes")
        extractor = ActivationExtractor(net, source.bank.layer, batch_size=batch_size,
                                        progress=progress, preprocess=preprocess
                                        if source.result is None else source.preprocess)
        acts = extractor(images)
        _, h = split_model(net, source.bank.layer)
        if extractor.prefix_ is not None:
            h, context = TokenHead(h, extractor.token_layout_), extractor.prefix_
    codes = torch.as_tensor(source.bank.encode(acts.detach().cpu().float())).float()
    gains = logit_gains(h, acts.detach().cpu(), codes, source.bank.components, context=context,
                        batch_size=batch_size, progress=progress)
    if not np.isfinite(gains).all():  # no class could be ranked: refused here, not deep inside
        bad = np.flatnonzero(~np.isfinite(gains).all(axis=1)).tolist()
        raise ValueError(f"the logit gains of concepts {bad} hold NaN or infinite values: the "
                         f"model's layers after {source.bank.layer!r} give non-finite logits on "
                         f"these activations. Check the model's weights for NaN or Inf (a "
                         f"diverged training), or name the concepts another way.")
    n_classes = gains.shape[1]
    if class_names is None:
        names, descriptions = default_class_names(n_classes)
    else:
        if not isinstance(class_names, (list, tuple)) or len(class_names) != n_classes:
            raise ValueError(f"`class_names` must list one name per model output ({n_classes}); "
                             f"got {describe(class_names)}.")
        names, descriptions = [str(c) for c in class_names], None
        stripped = [n.strip() for n in names]
        if len(set(stripped)) != len(stripped):  # a name would stand for two outputs
            raise ValueError(f"`class_names` names "
                             f"{sorted({n for n in stripped if stripped.count(n) > 1})} more "
                             f"than once (spaces around a name aside): a concept named so could "
                             f"not say which class it pushes.")
    left_out = excluded_classes(exclude, source.class_id, n_classes)
    allowed = np.array([c not in left_out for c in range(n_classes)])
    if not allowed.any():
        raise ValueError("`exclude` leaves no class to name concepts after.")
    summaries = targets = None
    if probe is not None:
        probe = as_probe(probe)
        summaries = source.summaries(probe.images, summary)
        targets = {names[c]: probe.labels == c for c in range(n_classes)} \
            if probe.labels is not None else None
    if min_score is not None:
        min_score = check_float(min_score, "min_score")
    params = {"n_images": int(acts.shape[0]), "excluded": sorted(left_out), "summary": summary}
    return _table("classes", gains, names, score_name=SCORES["classes"], min_score=min_score,
                  n_runner_ups=n_runner_ups, params=params, summaries=summaries, targets=targets,
                  descriptions=descriptions, allowed=allowed)


#: How :func:`name_by_clip` reads a crop's concept activation.
CROP_ACTIVATIONS = ("auto", "map", "resized")

_NAMERS = {"dissect": name_by_masks, "clip": name_by_clip, "classes": name_by_classes}


def name_concepts(concepts: Any, method: str = "dissect", *args: Any, **kwargs: Any) -> ConceptNames:
    """Name the concepts of an explanation (or of a bank with its model).

    ``method``: ``"dissect"`` (:func:`name_by_masks`: probe images with part masks),
    ``"clip"`` (:func:`name_by_clip`: CLIP-Dissect over a vocabulary) or ``"classes"``
    (:func:`name_by_classes`: the classes the concept pushes through ``h``). The other arguments
    go to that function. Every name comes with a score, runner-ups and, where the probe set has
    labels or masks for it, a CoSy-style trust score (AUC).
    """
    method = check_choice(method, "method", METHODS)
    _check_call(method, args, kwargs)
    return _NAMERS[method](concepts, *args, **kwargs)


#: What each method needs, for the error when it is not given.
_NEEDS = {"dissect": "probe images with part masks (a ConceptDataset, or (images, masks, "
                     "part_names))",
          "clip": "probe images (or a ConceptDataset) and a CLIP model (a ClipEncoders, an "
                  "(open_clip model, tokenizer) pair, or any object with encode_image and "
                  "encode_text)"}


def _check_call(method: str, args: tuple, kwargs: dict[str, Any]) -> None:
    """Refuse arguments the method's naming function cannot take, with the names it takes
    (rather than Python's message naming the internal function)."""
    import inspect

    from .._validation import did_you_mean

    kinds = inspect.Parameter
    params = list(inspect.signature(_NAMERS[method]).parameters.values())[1:]  # after concepts
    positional = [p.name for p in params if p.kind == kinds.POSITIONAL_OR_KEYWORD]
    named = [p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD,
                                                   kinds.KEYWORD_ONLY)]
    call = f"name_concepts({method!r})"
    if len(args) > len(positional):
        raise TypeError(f"{call} takes at most {len(positional)} argument(s) by position after "
                        f"the method ({', '.join(positional)}); got {len(args)}: pass the "
                        f"others by name.")
    given = set(positional[:len(args)])
    twice = sorted(given & set(kwargs))
    if twice:
        raise TypeError(f"{call} got {', '.join(f'`{n}`' for n in twice)} both by position and "
                        f"by name; pass each once.")
    similarity = [p.name for p in inspect.signature(soft_wpmi).parameters.values()
                  if p.kind == kinds.KEYWORD_ONLY] if method == "clip" else []
    extra = set(kwargs) - set(named) - set(similarity)  # clip: the rest go to soft-WPMI
    if extra:
        unknown = sorted(extra)
        hint = did_you_mean(unknown, named + similarity)
        raise TypeError(f"{call} got unknown argument(s) {unknown}{hint}; it takes "
                        f"{', '.join(named)}"
                        f"{' and the soft-WPMI settings ' + ', '.join(similarity) if similarity else ''}.")
    missing = [p.name for p in params if p.default is p.empty and p.name in named
               and p.name not in given and p.name not in kwargs]
    if missing:
        raise TypeError(f"{call} needs {' and '.join(f'`{n}`' for n in missing)}: "
                        f"{_NEEDS[method]}; e.g. result.name_concepts({method!r}, "
                        f"{', '.join(missing)}).")
