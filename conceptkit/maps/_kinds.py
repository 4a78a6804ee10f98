"""Which kind of concept map an explanation shows by default, and why."""

from __future__ import annotations

#: Every map kind an explanation can compute (``"auto"`` picks one with :func:`choose_map_kind`).
MAP_KINDS = ("auto", "coefficient", "dominant", "gradient", "pixel", "provenance",
             "scale_matched")


def choose_map_kind(method: str, *, fitted: bool, has_images: bool, tokens: bool,
                    patch_size: int | None, spatial: bool) -> str:
    """The map kind ``"auto"`` stands for.

    Parameters
    ----------
    method
        The discovery method (``"craft"``, ``"ice"``, ``"ace"``).
    fitted
        The maps asked for are those of the images the explanation was fitted on (no kind
        depends on it since ACE's default became pixel maps; kept for callers).
    has_images
        Pixels are available (fitted images kept in memory, or new images given).
    tokens
        The layer outputs transformer tokens (or the layer's kind is unknown, after loading).
    patch_size
        CRAFT's crop side in pixels (None for other methods).
    spatial
        The layer gives spatial feature maps ``(N, C, h, w)``.

    ACE gets ``"pixel"`` maps whenever there are images, on any layer, and ``"coefficient"``
    maps without them. Every other method gets ``"pixel"`` maps on convolutional layers when
    there are images to compute them on, and ``"coefficient"`` maps on transformer tokens and
    when there are no images (an explanation loaded without its images, whose saved maps are
    shown).

    Why pixel maps for ACE (issue 13): until 2026-12-06 ACE painted its segments' codes back
    (``"provenance"``), because its k-means centroids come from pooled segment patches. Its
    pixel and gradient maps were then mostly empty: hard k-means keeps one concept per row, so
    the code of an image's mean activation kept one concept. With an image's code the mean of
    its positions' codes (``Factorizer.selects_codes``), pixel maps of ACE's concepts are the
    best kind on every world measured (``eval_ground_truth.py --methods ace``, seeds 0-2, pixel
    ablation; top on most relied / its pointing / Spearman): shapes 0.89 / 0.89 / 0.84 against
    0.67 / 0.65 / 0.49 with segments, textures 1.00 / 0.89 / 0.55 against 0.00 / 0.35 / 0.06,
    scales 1.00 / 0.98 / 0.81 against 0.83 / 0.77 / 0.68, the context ViT 0.92 / 0.82 / 0.79
    against 0.50 / 0.43 / 0.19, the shapes ViT 0.61 / 0.61 / 0.74 against 0.50 / 0.46 / 0.73;
    shortfall 1.50 over the five against 6.44 (coefficient maps 8.84 on the first four alone).

    Why pixel maps (issue 13): chosen on the four ground-truth worlds
    (``benchmarks/eval_ground_truth.py --worlds all``, 3 seeds, BENCHMARKS.md). No map kind
    meets the issue's bar (on every world: the top concept on the most relied-on part for every
    class, its pointing game >= 0.95, Spearman >= 0.8), so the rule is the smallest total
    shortfall from that bar, summed over worlds and the three metrics. With pixel ablation as
    the importance (its regions then the top decile), pixel maps have the smallest with both
    NMF methods (ICE 0.89, CRAFT 1.58, against 1.34 and 1.89 with coefficient maps) and the
    smallest worst-world shortfall (0.65 and 0.64 against 0.98 and 0.77; on the ViT alone 0.65
    against 0.97 with ICE): their top concept sits on the most relied-on part in 0.96 of the
    class fits with ICE (0.89 with coefficient maps) because the explained layers are 8 x 8
    grids on 64-px images and coefficient maps spill a part onto its neighbours. They rank the
    ViT's concepts worse (Spearman 0.42 against 0.49 with ICE). With pixel ablation's regions
    now four sizes, ICE's shortfall is 0.69 with pixel maps and 1.50 with coefficient maps.
    Scale-matched maps fail on the textures world and cannot run on a fixed-size ViT; gradient
    maps are within noise of coefficient maps.

    Why coefficient maps on transformer tokens: measured on the two ViT worlds (the context
    world and the same small ViT trained on the shapes world, ``--worlds context,shapes:vit``,
    3 seeds, ICE, pixel ablation over four region sizes). Pixel maps differentiate a concept's
    code through attention, which mixes every patch into every token: on the shapes ViT they
    point at distractors (the top concept on the most relied-on part in 0.22 of the class fits,
    the best concept's pointing game on it 0.49, shortfall 2.05), where the tokens' own codes
    sit on the parts (0.72 and 0.91, shortfall 0.86). On the context world pixel maps are the
    better of the two (shortfall 0.65 against 0.95), but over both ViT worlds coefficient maps
    have the smaller total (1.81 against 2.70) and the smaller worst world (0.95 against 2.05).
    Those numbers are SemiNMF concepts'. With the token autoencoder (the default on tokens now)
    and image codes that are the mean of the tokens' codes, seeds 0-4: coefficient maps
    shortfall 0.92 over both worlds, pixel maps 1.53, gradient maps 1.98.
    A layer whose kind is unknown (an explanation loaded without a model) counts as tokens.

    Why not ``"dominant"`` maps on tokens (each position kept only for the concept that
    dominates it, :func:`conceptkit.maps.dominant_maps`): on the same two worlds and seeds they
    rank the concepts better on the shapes ViT (Spearman 0.58 against 0.47) and lower the total
    shortfall counted strictly (1.56 against 1.81), but with parts of equal measured reliance
    counted alike, the top concept sits on a most relied-on part less often (context 0.83
    against 1.00, shapes ViT 0.78 against 0.89) and points at it less (0.73 against 0.93 and
    0.83), so that total rises (1.31 against 0.85). The two readings disagree, so the default
    stays.
    """
    if method == "ace":
        return "pixel" if has_images else "coefficient"
    if not has_images or tokens:
        return "coefficient"
    return "pixel"
