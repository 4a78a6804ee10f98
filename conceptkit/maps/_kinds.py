"""Which kind of concept map an explanation shows by default, and why."""

from __future__ import annotations

#: Every map kind an explanation can compute (``"auto"`` picks one with :func:`choose_map_kind`).
MAP_KINDS = ("auto", "coefficient", "gradient", "provenance", "scale_matched")


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
    (``"provenance"``). CRAFT on a convolutional layer gets ``"scale_matched"`` maps (the image
    enlarged to the crops' scale); everything else gets ``"coefficient"`` maps.
    """
    if method == "ace" and fitted:
        return "provenance"
    if method == "craft" and not tokens and has_images and patch_size and spatial:
        return "scale_matched"
    return "coefficient"
