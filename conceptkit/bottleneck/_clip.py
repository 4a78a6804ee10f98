"""CLIP-style image and text encoders behind one small adapter, with a text-embedding cache.

:class:`ClipEncoders` turns an open_clip model (+ tokenizer, + optional preprocess) or any object
with ``encode_image(images)`` and ``encode_text(list[str])`` (the :class:`ClipLike` protocol)
into batched, L2-normalised encoders. Text embeddings are cached by
``(model id, checkpoint id, template, concept-list hash)``: in memory per adapter, and on disk
(one safetensors file per key, never pickle) when a ``cache_dir`` is given and the checkpoint is
identified (a pretrained tag, a file hash, or a hash of the weights).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import (
    leaves_global_rng,
    model_device,
    on_device,
    preserved_model_state,
    weights_state,
)
from .._validation import check_images, check_int, close_names, describe, resolve_device
from ..io import FormatError, load_file, loading, save_file

TEXT_CACHE_KIND = "clip_text_embeddings"
TEXT_CACHE_VERSION = 1
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class ClipLike(Protocol):
    """Any CLIP-style model: images ``(N, 3, H, W)`` → ``(N, D)``; texts → ``(M, D)``."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, texts: list[str]) -> torch.Tensor: ...


def _hash_tensors(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "weights-sha256:" + digest.hexdigest()[:32]


def _hash_file(path: str) -> str:
    from ..io import file_sha256

    return "file-sha256:" + file_sha256(path)[:32]


def _tensor_transform(size: tuple[int, int], mean: Sequence[float],
                      std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Resize (shorter side, bicubic), centre-crop and normalise images in [0, 1]."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def transform(images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        scale = max(size[0] / h, size[1] / w)
        if (h, w) != tuple(size):
            new = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
            images = F.interpolate(images, size=new, mode="bicubic", align_corners=False,
                                   antialias=True).clamp(0, 1)
            top, left = (new[0] - size[0]) // 2, (new[1] - size[1]) // 2
            images = images[..., top:top + size[0], left:left + size[1]]
        return (images - mean_t.to(images)) / std_t.to(images)

    return transform


def _pil_transform(preprocess: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    """Apply an open_clip (PIL) ``preprocess`` to each image of a [0, 1] tensor batch."""
    from torchvision.transforms.functional import to_pil_image

    def transform(images: torch.Tensor) -> torch.Tensor:
        return torch.stack([preprocess(to_pil_image(img.cpu().clamp(0, 1))) for img in images])

    return transform


@leaves_global_rng
def _load_open_clip(name: str, *, pretrained: str | None, device: torch.device,
                    cache_dir: str | None) -> tuple[nn.Module, Callable, str | None]:
    """Create an open_clip model by name; download failures become an offline-friendly error."""
    import open_clip

    if not name.startswith(("hf-hub:", "local-dir:")) and open_clip.get_model_config(name) is None:
        close = close_names(name, open_clip.list_models())
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        raise ValueError(f"`model` {name!r} is not an open_clip model name{hint} See "
                         f"open_clip.list_models(), or use 'local-dir:/path'.")
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, cache_dir=cache_dir)
    except (RuntimeError, FileNotFoundError, OSError) as err:
        raise ValueError(
            f"open_clip could not load weights {pretrained!r} for {name!r}: {err}\n"
            f"Offline? Pass a local checkpoint file as `pretrained` "
            f"('/path/open_clip_pytorch_model.bin' or '.safetensors'), or a directory as "
            f"model='local-dir:/path' (open_clip_config.json + weights), or download once online "
            f"and then run with HF_HUB_OFFLINE=1 to use the cached copy.") from err
    model._conceptkit_name = name
    model.eval()
    if pretrained is None:
        checkpoint = None  # random or config-dir weights: identified by hashing them
    elif os.path.isfile(pretrained):
        checkpoint = _hash_file(pretrained)
    else:
        checkpoint = f"tag:{pretrained}"
    return model, open_clip.get_tokenizer(name), checkpoint


class ClipEncoders:
    """Batched, L2-normalised CLIP-style image and text encoders with a text cache.

    Parameters
    ----------
    encode_image : callable
        Preprocessed images ``(N, 3, H, W)`` → embeddings ``(N, D)``.
    encode_text : callable
        A list of strings → embeddings ``(M, D)``.
    image_transform : callable, optional
        Applied to images in [0, 1] before ``encode_image`` (resizing, normalisation).
    model_id : str
        Identifies the architecture in cache keys (e.g. ``"open_clip:ViT-B-32"``).
    checkpoint_id : str, optional
        Identifies the weights (tag, file hash, weights hash). Without it the disk cache is off:
        a stale cache from other weights would silently give wrong embeddings.
    device : str or torch.device, optional
        Where images and tokens are sent and ``module`` runs (default: where ``module`` is, or
        the CPU without one).
    batch_size : int
        Images / texts per forward pass.
    module : nn.Module, optional
        The model behind the encoders: each call runs it in eval mode without gradients, on
        ``device``, and restores its flags and its device afterwards.
    """

    def __init__(self, encode_image: Callable[[torch.Tensor], torch.Tensor],
                 encode_text: Callable[[list[str]], torch.Tensor], *,
                 image_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 model_id: str = "custom", checkpoint_id: str | None = None,
                 device: Any = None, batch_size: int = 64, module: nn.Module | None = None):
        if not callable(encode_image) or not callable(encode_text):
            raise TypeError("`encode_image` and `encode_text` must be callables.")
        self._encode_image = encode_image
        self._encode_text = encode_text
        self.image_transform = image_transform
        self.model_id = str(model_id)
        self.checkpoint_id = checkpoint_id
        # with a module and no `device`: where the module is
        self.device = (model_device(module) if device is None and isinstance(module, nn.Module)
                       else resolve_device(device))
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.module = module
        # key -> (the texts, their embeddings): a hit is checked against the texts themselves
        self._text_cache: dict[tuple[str, ...], tuple[list[str], torch.Tensor]] = {}
        self._weights_seen = weights_state(module)

    def _current_checkpoint(self) -> str | None:
        """The checkpoint id, re-derived when the module's weights changed since it was taken
        (fine-tuned in place, reloaded): the tag or hash given at wrapping then no longer names
        these weights, and a cache keyed by it would serve another model's embeddings."""
        if self.module is not None:
            now = weights_state(self.module)
            if now != self._weights_seen:
                self.checkpoint_id = _hash_tensors(self.module)
                self._weights_seen = now
        return self.checkpoint_id

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_open_clip(cls, model: nn.Module | str, tokenizer: Callable | None = None,
                       preprocess: Callable | None = None, *, pretrained: str | None = None,
                       device: Any = None, cache_dir: str | None = None,
                       checkpoint_id: str | None = None, batch_size: int = 64) -> ClipEncoders:
        """Wrap an open_clip model, or load one by name.

        Parameters
        ----------
        model : nn.Module or str
            An open_clip ``CLIP`` model (with ``tokenizer``), or a model name such as
            ``"ViT-B-32"`` / ``"local-dir:/path"`` to create with ``open_clip``.
        tokenizer : callable, optional
            ``tokenizer(list[str]) -> tokens``; required with a model object, looked up by
            name otherwise.
        preprocess : callable, optional
            open_clip's PIL preprocess; when given it is applied image by image (exactly
            open_clip's pipeline). Otherwise a tensor transform built from the model's
            preprocess config (resize, centre crop, normalise) is used.
        pretrained : str, optional
            With a name: an open_clip tag (needs a download or a cached copy) or a local
            checkpoint file path. ``None`` gives random weights.
        checkpoint_id : str, optional
            Identifies the weights for the disk cache; default: the tag, the file's hash, or a
            hash of the model's weights.
        """
        if isinstance(model, str):
            dev = resolve_device(device)
            model, tokenizer, loaded_id = _load_open_clip(model, pretrained=pretrained, device=dev,
                                                          cache_dir=cache_dir)
            checkpoint_id = checkpoint_id or loaded_id
        elif not isinstance(model, nn.Module) or not hasattr(model, "encode_image") \
                or not hasattr(model, "encode_text"):
            raise TypeError(f"`model` must be an open_clip model (with encode_image and encode_text) "
                            f"or a model name; got {describe(model)}.")
        if tokenizer is None or not callable(tokenizer):
            raise TypeError("`tokenizer` is required with an open_clip model object: pass "
                            "open_clip.get_tokenizer(model_name).")
        # a user's model stays where it is: each call runs on `device` (default: the model's)
        # and moves it back afterwards, in eval mode, its flags restored
        dev = model_device(model) if device is None else resolve_device(device)
        if preprocess is not None:
            transform = _pil_transform(preprocess)
        else:
            import open_clip

            cfg = open_clip.get_model_preprocess_cfg(model)
            size = cfg.get("size", 224)
            size = (size, size) if isinstance(size, int) else tuple(size)
            transform = _tensor_transform(size, cfg.get("mean", _OPENAI_MEAN), cfg.get("std", _OPENAI_STD))

        def encode_text(texts: list[str]) -> torch.Tensor:
            return model.encode_text(tokenizer(texts).to(dev))

        name = getattr(model, "_conceptkit_name", type(model).__name__)
        return cls(model.encode_image, encode_text, image_transform=transform,
                   model_id=f"open_clip:{name}", checkpoint_id=checkpoint_id or _hash_tensors(model),
                   device=dev, batch_size=batch_size, module=model)

    @classmethod
    def wrap(cls, clip: Any, device: Any = None) -> ClipEncoders:
        """Accept a :class:`ClipEncoders`, ``(open_clip model, tokenizer[, preprocess])`` or a
        :class:`ClipLike` object whose ``encode_text`` takes a list of strings."""
        if isinstance(clip, ClipEncoders):
            return clip
        if isinstance(clip, (tuple, list)) and len(clip) in (2, 3):
            return cls.from_open_clip(*clip, device=device)
        if isinstance(clip, nn.Module) and hasattr(clip, "visual") and hasattr(clip, "encode_text"):
            raise TypeError("`clip` is an open_clip model without its tokenizer; pass "
                            "(model, open_clip.get_tokenizer(name)) or ClipEncoders.from_open_clip.")
        if isinstance(clip, ClipLike):
            module = clip if isinstance(clip, nn.Module) else None
            return cls(clip.encode_image, clip.encode_text, model_id=f"custom:{type(clip).__name__}",
                       checkpoint_id=getattr(clip, "checkpoint_id", None), device=device,
                       module=module)
        raise TypeError(f"`clip` must be a ClipEncoders, an (open_clip model, tokenizer) pair, or an "
                        f"object with encode_image(images) and encode_text(list[str]); "
                        f"got {describe(clip)}.")

    # -- encoding -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _running(self):
        """One call's batches: the module (when there is one) in eval mode on ``device``, its
        flags and its device restored afterwards (moved once per call, not per batch)."""
        if self.module is None:
            with torch.no_grad():
                yield
            return
        with preserved_model_state(self.module), on_device(self.module, self.device), \
                torch.no_grad():
            yield

    def image_embeddings(self, images: torch.Tensor, *, progress: bool = False) -> torch.Tensor:
        """L2-normalised image embeddings ``(N, D)`` (float32, CPU) of images ``(N, 3, H, W)``."""
        images = check_images(images, "images", channels=3)
        out = []
        with self._running():
            for start in tqdm(range(0, len(images), self.batch_size), disable=not progress,
                              desc="CLIP images", leave=False):
                batch = images[start:start + self.batch_size].to(self.device)
                if self.image_transform is not None:
                    batch = self.image_transform(batch)
                out.append(self._checked(self._encode_image(batch), len(batch), "encode_image"))
        return F.normalize(torch.cat(out), dim=1)

    def _checked(self, emb: Any, n: int, what: str) -> torch.Tensor:
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != n:
            raise ValueError(f"`clip.{what}` must return an (N, D) tensor for N={n} inputs; "
                             f"got {describe(emb)}.")
        return emb.detach().float().cpu()

    def text_embeddings(self, texts: Sequence[str], *, template: str = "{}",
                        cache_dir: str | os.PathLike | None = None,
                        progress: bool = False) -> torch.Tensor:
        """L2-normalised embeddings ``(M, D)`` of ``template.format(text)`` for each text
        (``progress``: a tqdm bar over the batches of prompts encoded)."""
        texts = [str(t) for t in texts]
        if not texts:
            raise ValueError("`texts` is empty.")
        check_template(template)
        # the digest of the joined texts names the cache (as files written before); it is
        # ambiguous (["red\nround"] and ["red", "round"]), so a hit must hold the same texts
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
        checkpoint = self._current_checkpoint()
        key = (self.model_id, str(checkpoint), template, digest)
        hit = self._text_cache.get(key)
        if hit is not None and hit[0] == texts:
            return hit[1].clone()
        path = None
        if cache_dir is not None and checkpoint is not None:
            name = hashlib.sha256("\x00".join(key).encode()).hexdigest()[:32]
            path = Path(cache_dir) / f"text-{name}.safetensors"
            cached = self._read_cache(path, key, texts)
            if cached is not None:
                self._text_cache[key] = (texts, cached)
                return cached.clone()
        prompts = [template.format(t) for t in texts]
        out = []
        with self._running():
            for start in tqdm(range(0, len(prompts), self.batch_size), disable=not progress,
                              desc="CLIP texts", leave=False):
                chunk = prompts[start:start + self.batch_size]
                out.append(self._checked(self._encode_text(chunk), len(chunk), "encode_text"))
        emb = F.normalize(torch.cat(out), dim=1)
        self._text_cache[key] = (texts, emb)
        if path is not None:
            save_file(path, {"embeddings": emb}, {"key": list(key), "texts": texts},
                      kind=TEXT_CACHE_KIND, version=TEXT_CACHE_VERSION)
        return emb.clone()

    @staticmethod
    def _read_cache(path: Path, key: tuple[str, ...], texts: list[str]) -> torch.Tensor | None:
        if not path.exists():
            return None
        try:
            tensors, meta = load_file(path, kind=TEXT_CACHE_KIND, version=TEXT_CACHE_VERSION)
            with loading(path, "text-embedding cache entry"):
                if meta.get("key") != list(key) or meta.get("texts") != texts:
                    return None
                emb = tensors["embeddings"]
            # what this method writes: one finite, unit-length row per text
            if (emb.ndim != 2 or emb.shape[0] != len(texts) or not emb.is_floating_point()
                    or not bool(torch.isfinite(emb).all())
                    or not torch.allclose(emb.float().norm(dim=1), torch.ones(len(texts)),
                                          atol=1e-3)):
                return None
            return emb.float()
        except FormatError:
            return None  # an unreadable cache entry is recomputed and overwritten


def check_template(template: Any) -> str:
    """A prompt template: a str with exactly one ``{}`` where the text goes (no other field)."""
    import string

    if not isinstance(template, str):
        raise TypeError(f"`template` must be a str with '{{}}' where the text goes, e.g. "
                        f"'a photo of a {{}}'; got {describe(template)}.")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template)
                  if field is not None]
    except ValueError as err:  # a lone '{' or '}'
        raise ValueError(f"`template` {template!r} is not a valid format string ({err}); write "
                         f"'{{}}' where the text goes and double any other brace ('{{{{').") from None
    if fields != [""]:
        raise ValueError(f"`template` must contain '{{}}' exactly once, where the text goes, and "
                         f"no other field; got {template!r}.")
    return template


def clip_similarity(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``(N, M)`` of normalised image and text embeddings."""
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image and text embeddings differ in width: {image_emb.shape[1]} vs "
                         f"{text_emb.shape[1]}.")
    return image_emb @ text_emb.T

