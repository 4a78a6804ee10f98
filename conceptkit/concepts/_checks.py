"""What the discovery methods check about a factorizer before and after the extraction: the
number of concepts and the seed of a user's factorizer, and the sign of the activations."""

from __future__ import annotations

from typing import Any

from sklearn.base import clone

from .._validation import check_int, check_seed, describe
from ._base import Factorizer


class NegativeActivationsError(ValueError):
    """A factorizer that needs non-negative input (NMF) met negative activations at ``layer``.

    ``str(err)`` speaks Python (``factorizer=token_factorizer(k, seed)``, the top-k sparse
    autoencoder that ``tokens="auto"`` gives signed transformer tokens, or ``SemiNMF(k)``);
    :meth:`command_line` says the same with the ``conceptkit explain`` options.
    """

    def __init__(self, layer: str, minimum: float, factorizer: str, n_images: int | None = None):
        self.layer, self.minimum, self.factorizer, self.n_images = layer, minimum, factorizer, n_images
        super().__init__(self._text(
            "`layer`", "pass a factorizer that takes signed activations "
                       "(factorizer=token_factorizer(k, seed) from conceptkit.pipeline, the top-k "
                       "sparse autoencoder ViT/CLIP tokens get by default, or "
                       "factorizer=SemiNMF(k)), or factorizer=NMF(k, relu=True) to clip "
                       "negatives to 0"))

    def _text(self, layer_flag: str, alternatives: str) -> str:
        when = ("" if self.n_images is None else
                f" (found on the first image, before extracting all {self.n_images})")
        return (f"the activations at {layer_flag} {self.layer!r} have negative values (min "
                f"{self.minimum:.4g}){when}, but {self.factorizer} needs non-negative activations: "
                f"pick a layer after a ReLU, {alternatives}.")

    def command_line(self) -> str:
        """The message in ``conceptkit explain`` terms."""
        return self._text("`--layer`", "or pass `--factorizer topk_sae` (a top-k sparse "
                                       "autoencoder, the kind ViT/CLIP tokens get by default) or "
                                       "`--factorizer semi_nmf` for signed activations")


def check_sign(factorizer: Factorizer, activations: Any, layer: str,
               n_images: int | None = None) -> None:
    """Raise :class:`NegativeActivationsError` when ``factorizer`` needs non-negative input and
    ``activations`` have negative values (a factorizer with ``relu=True`` clips them itself)."""
    if factorizer.requires_nonnegative and not getattr(factorizer, "relu", False):
        low = float(activations.min())
        if low < 0:
            raise NegativeActivationsError(layer, low, type(factorizer).__name__, n_images)


def configured_factorizer(factorizer: Any, n_concepts: int | None, seed: int | None) -> Factorizer:
    """A clone of the user's ``factorizer`` with ``n_concepts`` and ``seed`` applied.

    ``n_concepts=None`` keeps the factorizer's ``n_concepts``; a different value from the
    factorizer's is refused (the two cannot both be meant). ``seed`` sets ``random_state`` on the
    clone when the factorizer has one and it is unset (``None``); a ``random_state`` the user set
    is kept. The user's object is never changed.
    """
    if not isinstance(factorizer, Factorizer):
        raise TypeError(f"`factorizer` must be a conceptkit Factorizer (NMF, SemiNMF, "
                        f"KMeansConcepts, ...); got {describe(factorizer)}.")
    params = factorizer.get_params(deep=False)
    own = params.get("n_concepts")
    est = clone(factorizer)  # never mutate the user's object
    if n_concepts is not None:
        n_concepts = check_int(n_concepts, "n_concepts", minimum=1)
        if own is not None and own != n_concepts:
            raise ValueError(
                f"`n_concepts`={n_concepts} contradicts `factorizer`={type(factorizer).__name__}"
                f"(n_concepts={own}): give the number of concepts once, either as n_concepts "
                f"(leave the factorizer's at its value) or in the factorizer (leave n_concepts "
                f"unset).")
        est.set_params(n_concepts=n_concepts)
    if seed is not None and "random_state" in params and params["random_state"] is None:
        est.set_params(random_state=check_seed(seed, "seed"))
    return est
