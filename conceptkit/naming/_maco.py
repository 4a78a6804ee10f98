"""Concepts in pictures: MACO feature visualisation (Fel et al., NeurIPS 2023).

MAgnitude-Constrained Optimisation parametrises an image by its Fourier *phase* only: the
magnitude spectrum stays fixed at that of natural images, so the optimisation cannot pile energy
into the high frequencies that make classic feature visualisations look like noise::

    image = sigmoid(C · standardise(irfft2(|F| · e^{iφ})))

``|F|`` and the colour matrix ``C`` are computed from the user's own images (nothing is
downloaded): ``C = U √Λ`` from the eigendecomposition of the images' pixel colour covariance
(scaled so its largest column has norm 1), and ``|F|`` is the mean magnitude of the images'
spectra in the decorrelated colour space ``C⁻¹ (x − mean)``. Each step cuts ``n_crops`` random
square crops (side a random fraction in ``crop_fraction`` of the image), resizes them to the
model's input, adds Gaussian noise, and takes a NAdam step on ``φ`` that raises the concept's
coefficient at the layer: the concept's code of the crop's spatially averaged activations —
exactly how CRAFT codes its crops — differentiated through the non-negative least-squares
encoding (:meth:`ConceptBank.encode_differentiable <conceptkit.concepts.ConceptBank.encode_differentiable>`). Where the concept is inactive (code 0,
no gradient: a random start on a real network), the objective is the coefficient it would take
on the residual instead (:func:`signed_coefficients`), which is negative there and meets the code
where the concept switches on.

The transparency map accumulates ``|∂ objective / ∂ image|`` over all steps (summed over colour
channels, scaled to [0, 1]): where the visualisation matters to the concept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._deprecation import renamed_arguments
from .._reprs import dataclass_repr
from .._torchutils import capture_output, model_dtype, on_device, preserved_model_state
from .._validation import check_float, check_images, check_int, describe
from ..concepts import ConceptBank
from ..extraction._extractor import (
    TokenLayout,
    expected_in_channels,
    infer_prefix_tokens,
    tokens_to_maps,
)
from ..extraction._layers import get_layer
from ..extraction._windows import refuse_cls_concepts


@dataclass(frozen=True)
class ConceptVisualization:
    """A MACO visualisation of one concept.

    Attributes
    ----------
    image : torch.Tensor
        ``(3, image_size, image_size)`` in [0, 1].
    transparency : torch.Tensor
        ``(image_size, image_size)`` in [0, 1]: accumulated gradient magnitude (where the image matters).
    concept : int
    objective : np.ndarray
        ``(steps,)`` the concept's mean coefficient over each step's crops.
    params : dict
        Settings used (steps, image_size, crops, noise, learning rate, seed).
    """

    image: torch.Tensor
    transparency: torch.Tensor
    concept: int
    objective: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    def masked(self, percentile: float = 80.0) -> torch.Tensor:
        """The image faded to white where the transparency is below its ``percentile``."""
        cut = float(np.percentile(self.transparency.numpy(), percentile))
        alpha = (self.transparency / max(cut, 1e-12)).clamp(0, 1)
        return self.image * alpha + (1 - alpha)


def colour_matrix(images: torch.Tensor) -> torch.Tensor:
    """``(3, 3)`` colour recorrelation ``U √Λ`` of the images' pixel colours (largest column
    norm 1)."""
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double()
    cov = torch.cov(pixels)
    values, vectors = torch.linalg.eigh(cov)
    matrix = vectors * values.clamp_min(1e-12).sqrt()
    return (matrix / matrix.norm(dim=0).max()).float()


def magnitude_spectrum(images: torch.Tensor, size: int, colours: torch.Tensor) -> torch.Tensor:
    """Mean ``|rfft2|`` ``(3, size, size // 2 + 1)`` of the images resized to ``size``, in the
    colour space decorrelated by ``colours``."""
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear",
                            align_corners=False, antialias=True)
    centred = resized - resized.mean(dim=(0, 2, 3), keepdim=True)
    decorrelated = torch.einsum("ij,njhw->nihw", torch.linalg.inv(colours.double()).float(), centred)
    return torch.fft.rfft2(decorrelated).abs().mean(0)


def _image(phase: torch.Tensor, magnitude: torch.Tensor, colours: torch.Tensor,
           size: int) -> torch.Tensor:
    spectrum = torch.polar(magnitude, phase)
    image = torch.fft.irfft2(spectrum, s=(size, size))
    image = (image - image.mean()) / image.std().clamp_min(1e-8)
    image = torch.einsum("ij,jhw->ihw", colours, image)
    return torch.sigmoid(image)


def _pooled(output: Any, n: int, model: nn.Module, probe: Any = None) -> torch.Tensor:
    """Layer output → spatially averaged activations ``(n, C)``; ``probe`` gives the layer's
    output for one input, which settles the token layout of a batch of as many inputs as
    tokens."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.ndim == 3:  # transformer tokens: patch-token maps, as the explanation sees them
        output = TokenLayout("the layer").batch_first(output, n, probe)
        output = tokens_to_maps(output, infer_prefix_tokens(model, output.shape[1]))
    return output.mean(dim=tuple(range(2, output.ndim))) if output.ndim > 2 else output


def crop_coefficients(model: nn.Module, bank: ConceptBank, crops: torch.Tensor,
                      preprocess: Callable | None = None) -> torch.Tensor:
    """Differentiable codes ``(n, k)`` of crops already at the model's input size."""
    return bank.encode_differentiable(crop_activations(model, bank.layer, crops, preprocess))


def signed_coefficients(bank: ConceptBank, pooled: torch.Tensor) -> torch.Tensor:
    """The concepts' codes ``(n, k)`` where they are active, and below zero where they are not.

    An inactive non-negative code (0) has no gradient, so an optimisation that starts where the
    concept is absent would never move. Where concept ``j`` is inactive, this gives instead the
    coefficient it would take on the residual, ``w_j · (a − u W) / ‖w_j‖²`` — at most 0 there (the
    NNLS optimality condition), 0 where the concept is about to become active (so the two pieces
    meet), and differentiable: raising it is what brings the concept in. A top-k autoencoder's
    inactive concept gets its encoder pre-activation minus the smallest code its row keeps.
    """
    codes = bank.encode_differentiable(pooled)
    if not getattr(bank.factorizer, "nonnegative_codes", False):
        return codes
    preactivation = getattr(bank.factorizer, "_preactivation", None)
    if preactivation is not None:
        # an explicit top-k encoder: an inactive concept's pre-activation minus the smallest
        # code kept in its row (at most 0; raising it is what brings the concept in)
        pre = preactivation(pooled)
        active = codes.detach() > 0
        kept = torch.where(active, pre.detach(), torch.full_like(pre, float("inf"))).amin(1)
        bar = torch.where(torch.isfinite(kept), kept, torch.zeros_like(kept)).clamp_min(0)
        return torch.where(active, codes, pre - bar[:, None])
    W = bank.components.to(pooled)
    residual = pooled - codes @ W
    would_be = (residual @ W.T) / (W * W).sum(1).clamp_min(1e-12)
    return torch.where(codes.detach() > 0, codes, would_be)


def crop_activations(model: nn.Module, layer: str, crops: torch.Tensor,
                     preprocess: Callable | None = None) -> torch.Tensor:
    """Spatially averaged activations ``(n, C)`` at ``layer`` of crops at the model's input size.

    The crops are cast to the model's dtype (a float64 model gets float64 inputs); the
    activations come back as float32, as the concept bank encodes them.
    """
    _, module = get_layer(model, layer, "bank.layer")
    inputs = preprocess(crops) if preprocess is not None else crops
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        inputs = inputs.to(model_dtype(model))  # differentiable; a no-op for a float32 model
    output = capture_output(model, module, inputs)
    if output is None:
        raise ValueError(f"the layer {layer!r} never ran in the model's forward pass.")

    def probe() -> torch.Tensor:
        with torch.no_grad():
            single = capture_output(model, module, inputs[:1].detach())
        return single[0] if isinstance(single, (tuple, list)) else single

    return _pooled(output, crops.shape[0], model, probe).float()


def _random_crops(image: torch.Tensor, n: int, fraction: tuple[float, float], out: int,
                  generator: torch.Generator) -> torch.Tensor:
    size = image.shape[-1]
    crops = []
    for _ in range(n):
        u = torch.rand(3, generator=generator).tolist()
        side = max(2, int(round(size * (fraction[0] + u[0] * (fraction[1] - fraction[0])))))
        top, left = int(u[1] * (size - side + 1)), int(u[2] * (size - side + 1))
        crop = image[:, top:top + side, left:left + side]
        crops.append(F.interpolate(crop[None], size=(out, out), mode="bilinear",
                                   align_corners=False)[0])
    return torch.stack(crops)


@renamed_arguments(learning_rate="lr")  # 0.2: the name train_cbm, TopKSAE and torch use
def visualize_concept(model: nn.Module, bank: ConceptBank, concept: int, images: torch.Tensor, *,
                      steps: int = 256, image_size: int | None = None,
                      input_size: int | None = None, n_crops: int = 6,
                      crop_fraction: tuple[float, float] = (0.5, 0.7), noise: float = 0.05,
                      lr: float = 1.0, preprocess: Callable | None = None,
                      seed: int = 0, device: Any = None,
                      progress: bool = True) -> ConceptVisualization:
    """MACO visualisation of ``concept`` of ``bank`` (see the module notes).

    Parameters
    ----------
    model : nn.Module
        The explained model (left as found).
    bank : ConceptBank
        The concepts, at ``bank.layer``.
    concept : int
    images : (N, 3, H, W)
        The user's images in [0, 1] (e.g. the class's): their mean magnitude spectrum and colour
        statistics constrain the visualisation.
    steps : int
        Optimisation steps (horama: 1000).
    image_size : int, optional
        Side of the visualisation in pixels; default ``input_size / mean(crop_fraction)``
        (rounded up to a multiple of 8), so that a crop is about the model's input: the model
        sees the visualisation at its own scale (horama: 1280 px for 224-px inputs). Smaller
        images mean upsampled, blurred crops and a much weaker optimum.
    input_size : int, optional
        Side of the model's input the crops are resized to (default: the images' side).
    n_crops, crop_fraction, noise : int, (float, float), float
        Crops per step, their side as a fraction of ``image_size``, Gaussian noise std added to them
        (horama's defaults: 6, (0.20, 0.25), 0.05).
    lr : float
        NAdam step on the phase (1.0, as horama). Was ``learning_rate``.
    preprocess : callable, optional
        Input normalisation applied to the crops (images stay in [0, 1]).
    seed : int
        Seeds the initial phase, the crops and the noise (0 by default: the same concept always
        gives the same picture).
    device : str or torch.device, optional
        Where the optimisation runs (None: where the model is); the model is moved there for the
        call and back afterwards.
    progress : bool
        A tqdm bar over the steps.
    """
    refuse_cls_concepts(bank, "visualize_concept")
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {describe(model)}.")
    if not isinstance(bank, ConceptBank):
        raise TypeError(f"`bank` must be a ConceptBank; got {describe(bank)}.")
    concept = check_int(concept, "concept", minimum=0, maximum=bank.n_concepts - 1)
    wanted = expected_in_channels(model)
    if wanted is not None and wanted != 3:  # else "images must have 3 channels", not the cause
        raise ValueError(f"MACO draws RGB images (3 channels), and `model` takes {wanted}-channel "
                         f"inputs (its first layer): visualize_concept cannot draw its concepts. "
                         f"Show their exemplars or maps instead.")
    images = check_images(images, "images", channels=3, pixels=True)
    steps = check_int(steps, "steps", minimum=1)
    input_size = check_int(input_size if input_size is not None else min(images.shape[-2:]),
                           "input_size", minimum=8)
    n_crops = check_int(n_crops, "n_crops", minimum=1)
    if (not isinstance(crop_fraction, (tuple, list)) or len(crop_fraction) != 2
            or not 0 < float(crop_fraction[0]) <= float(crop_fraction[1]) <= 1):
        raise ValueError(f"`crop_fraction` must be a pair (low, high) with 0 < low <= high <= 1; "
                         f"got {crop_fraction!r}.")
    fraction = (float(crop_fraction[0]), float(crop_fraction[1]))
    if image_size is None:
        image_size = int(np.ceil(input_size / (0.5 * (fraction[0] + fraction[1])) / 8) * 8)
    size = check_int(image_size, "image_size", minimum=8)
    noise = check_float(noise, "noise", minimum=0.0)
    lr = check_float(lr, "lr", minimum=0.0, strict_minimum=True)
    seed = check_int(seed, "seed", minimum=0)
    if preprocess is not None and not callable(preprocess):
        raise TypeError(f"`preprocess` must be callable; got {describe(preprocess)}.")

    with on_device(model, device) as where:
        return _optimise(model, bank, concept, images, steps=steps, size=size,
                         input_size=input_size, n_crops=n_crops, fraction=fraction, noise=noise,
                         lr=lr, preprocess=preprocess, seed=seed,
                         device=where, progress=progress)


def _optimise(model: nn.Module, bank: ConceptBank, concept: int, images: torch.Tensor, *,
              steps: int, size: int, input_size: int, n_crops: int, fraction: tuple[float, float],
              noise: float, lr: float, preprocess: Callable | None, seed: int,
              device: torch.device, progress: bool) -> ConceptVisualization:
    colours = colour_matrix(images.cpu()).to(device)
    magnitude = magnitude_spectrum(images.cpu(), size, colours.cpu()).to(device)
    if not bool(torch.isfinite(magnitude).all()) or float(magnitude.max()) <= 1e-6:
        # MACO keeps the images' magnitude and optimises the phase: with no variation there is
        # no magnitude, every phase gives the same flat picture
        raise ValueError("`images` show no variation (every pixel one colour): their magnitude "
                         "spectrum is zero, so MACO could only draw a flat picture. Give images "
                         "of the class as they are.")
    generator = torch.Generator().manual_seed(seed)
    phase = ((torch.rand(magnitude.shape, generator=generator) * 2 - 1) * np.pi).to(device)
    phase.requires_grad_(True)
    optimiser = torch.optim.NAdam([phase], lr=lr)
    transparency = torch.zeros(size, size, device=device)
    history = np.zeros(steps)
    # the phase is optimised by gradients, also when the caller runs under torch.no_grad()
    with preserved_model_state(model), torch.enable_grad():
        model.requires_grad_(False)  # gradients flow to the image only (flags restored after)
        bar = tqdm(range(steps), disable=not progress, desc=f"MACO concept {concept}", leave=False)
        for step in bar:
            image = _image(phase, magnitude, colours, size)
            image.retain_grad()
            crops = _random_crops(image, n_crops, fraction, input_size, generator)
            if noise > 0:
                crops = crops + noise * torch.randn(crops.shape, generator=generator).to(device)
            pooled = crop_activations(model, bank.layer, crops, preprocess)
            codes = signed_coefficients(bank, pooled)[:, concept]
            objective = codes.mean()
            optimiser.zero_grad(set_to_none=True)
            (-objective).backward()
            transparency += image.grad.detach().abs().sum(0)
            optimiser.step()
            history[step] = float(objective.detach())
            if progress:
                bar.set_postfix(coefficient=f"{history[step]:.4g}")
    with torch.no_grad():
        final = _image(phase.detach(), magnitude, colours, size).cpu()
    peak = float(transparency.max())
    transparency = (transparency / peak if peak > 0 else transparency).cpu()
    params = {"steps": steps, "image_size": size, "input_size": input_size, "n_crops": n_crops,
              "crop_fraction": list(fraction), "noise": noise, "lr": lr,
              "seed": seed, "n_spectrum_images": int(images.shape[0])}
    return ConceptVisualization(final, transparency, concept, history, params)


# Short reprs: shapes of arrays, not their values (print(vis) stays readable).
ConceptVisualization.__repr__ = dataclass_repr  # type: ignore[method-assign]
