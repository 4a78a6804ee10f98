"""Which kind of concept map an explanation shows by default, and why."""

from __future__ import annotations

#: Every map kind an explanation can compute (``"auto"`` picks one with :func:`choose_map_kind`).
MAP_KINDS = ("auto", "coefficient", "gradient", "pixel", "provenance", "scale_matched")


def choose_map_kind(method: str, *, fitted: bool, has_images: bool, tokens: bool,
                    patch_size: int | None, spatial: bool) -> str:
    """The map kind ``"auto"`` stands for.

    Parameters
    ----------
    method
        The discovery method (``"craft"``, ``"ice"``, ``"ace"``).
    fitted
        The maps asked for are those of the images the explanation was fitted on.
    has_images
        Pixels are available (fitted images kept in memory, or new images given).
    tokens
        The layer outputs transformer tokens (or the layer's kind is unknown, after loading).
    patch_size
        CRAFT's crop side in pixels (None for other methods).
    spatial
        The layer gives spatial feature maps ``(N, C, h, w)``.

    ACE's k-means centroids come from pooled segment patches, so encoding single positions with
    them is not meaningful: its fitted images get their segments' codes painted back
    (``"provenance"``). Everything else, CRAFT included, gets ``"coefficient"`` maps.

    Why coefficient maps for CRAFT (issue 13): chosen on the four ground-truth worlds
    (``benchmarks/eval_ground_truth.py --worlds all``, 3 seeds, BENCHMARKS.md). Scale-matched maps
    (the image enlarged to the crops' scale) localise the small parts of the shapes world best
    (pointing game of the best concept on the most relied-on part 0.98 vs 0.80), but they fail on
    the textures world (0.56 vs 0.99) and cannot run on a fixed-size ViT; coefficient maps have
    the best mean and the best worst world of the kinds that run everywhere (gradient maps are
    within noise of them and cost a backward pass per concept). ``kind="scale_matched"`` is still
    there for images whose parts are much smaller than the crops.
    """
    if method == "ace" and fitted:
        return "provenance"
    return "coefficient"
