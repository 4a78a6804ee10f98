"""Word lists for naming with CLIP, all available offline.

- ``"imagenet"``: the 1000 ImageNet class names that open_clip ships for zero-shot
  classification (``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``).
- ``"imagenet21k"``: the first lemma of each of timm's 21,843 ImageNet-21k synsets
  (``timm.data.ImageNetInfo("imagenet-21k")``), duplicates removed in order (20,101 words).
- a user list of strings (e.g. CLIP-Dissect's 20k most common English words, downloaded once).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .._validation import check_choice, describe

VOCABULARIES = ("imagenet", "imagenet21k")


@lru_cache(maxsize=2)
def _named(name: str) -> tuple[str, ...]:
    if name == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return tuple(IMAGENET_CLASSNAMES)
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-21k")
    words = (info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes()))
    return tuple(dict.fromkeys(w for w in words if w))


def vocabulary(name_or_words: Any) -> list[str]:
    """A word list: ``"imagenet"``, ``"imagenet21k"`` or a list of strings (checked, deduplicated
    in order)."""
    if isinstance(name_or_words, str):
        return list(_named(check_choice(name_or_words, "vocabulary", VOCABULARIES)))
    if not isinstance(name_or_words, (list, tuple)) or not name_or_words \
            or not all(isinstance(w, str) and w.strip() for w in name_or_words):
        raise TypeError(f"`vocabulary` must be 'imagenet', 'imagenet21k' or a non-empty list of "
                        f"non-empty strings; got {describe(name_or_words)}.")
    words = list(dict.fromkeys(w.strip() for w in name_or_words))
    if len(words) < 2:  # the softmax over one word is 1: every concept named it, at score 0
        raise ValueError(f"`vocabulary` must offer at least two distinct words to choose from; "
                         f"got {words}.")
    return words


@lru_cache(maxsize=1)
def _imagenet_info() -> Any:
    from timm.data import ImageNetInfo

    return ImageNetInfo()


def imagenet_gloss(index: int) -> tuple[str, str]:
    """``(lemmas, definition)`` of ImageNet-1k class ``index`` from timm's synset files."""
    info = _imagenet_info()
    detailed = info.index_to_description(int(index), detailed=True)
    lemmas, _, definition = detailed.partition(":")
    return lemmas.strip(), definition.strip()
