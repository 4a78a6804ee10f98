"""Are discovered concepts named right? Naming measured against the ground-truth worlds.

For every class of a ground-truth world (``conceptkit.datasets.load_world``: shapes, textures,
scales, context), CRAFT (10 concepts; the world's model and layer; Semi-NMF for the ViT of
``context``, whose tokens are signed) is fitted on the class's train images. For each of the
class's causal parts, its
*best-matching concept* is the one whose maps localise it best on those train images (mean
per-image IoU of the map above its 90th percentile, ``conceptkit.maps.match_concepts``) — a
criterion that does not look at the probe set or at any name. The part is *named right* when
that concept's name is the part's name (``dissect_probe_match``: the same, with the part's
best-matching concept taken on the held-out class images of the probe instead):

- ``dissect``: :func:`conceptkit.naming.name_by_masks` on probe images with part masks (a test
  split of the world), with its IoU and trust (AUC);
- ``clip``: :func:`conceptkit.naming.name_by_clip` with :class:`OracleClip`, the synthetic
  CLIP-like encoder of the label-free CBM tests (image embedding = the sum of the directions of the
  parts it shows, plus noise; a part's name embeds to its direction, any other word to a random
  direction orthogonal to every part), extended to know the crops of the probe images (a part
  counts with the share of its pixels inside the crop). The vocabulary is the ten part names plus
  open_clip's 1000 ImageNet class names as distractors.
- ``classes``: :func:`conceptkit.naming.name_by_classes`; "right" when the named class (the
  explained class left out) has the part among its causal parts.

Run: ``python benchmarks/eval_naming.py [--worlds shapes textures scales context]
[--seeds 0 1 2] [--n-train 30] [--n-probe 30] [--variants]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import conceptkit  # noqa: E402
from conceptkit.concepts import SemiNMF  # noqa: E402
from conceptkit.datasets import WORLDS, load_world  # noqa: E402
from conceptkit.extraction import crops  # noqa: E402
from conceptkit.maps import match_concepts  # noqa: E402
from conceptkit.naming import name_concepts, vocabulary  # noqa: E402

N_CONCEPTS = 10


def image_key(image: torch.Tensor) -> str:
    return hashlib.sha1(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class OracleClip:
    """CLIP stand-in that knows the parts of every image (and registered crop) it is shown.

    As the label-free CBM tests' encoder: ``encode_image`` = Σ_g presence_g · d_g + noise · ε
    (``d_g`` orthonormal part directions, ε a fixed per-image Gaussian), ``encode_text(name of
    part g) = d_g``, any other text a random vector orthogonal to every ``d_g``.
    """

    def __init__(self, datasets, dim: int = 32, noise: float = 0.1, seed: int = 0):
        first = datasets[0]
        basis = torch.linalg.qr(torch.randn(dim, dim,
                                            generator=torch.Generator().manual_seed(seed)))[0]
        k = first.n_concepts
        self.directions, self.unrelated = basis[:, :k], basis[:, k:]
        self.names, self.noise, self.dim = list(first.concept_names), noise, dim
        self.table = {image_key(img): c.float() for ds in datasets
                      for img, c in zip(ds.images, ds.concepts)}

    def add_crops(self, dataset, patch_size: int, stride: int | None = None) -> None:
        """Know the crops :func:`conceptkit.extraction.crops` cuts from ``dataset``'s images."""
        cut = crops(dataset.images, patch_size, stride, image_size=patch_size)
        prov = cut.provenance
        total = dataset.masks.flatten(2).sum(-1).float().clamp_min(1)
        for row in range(len(cut)):
            i = int(prov.image_ids[row])
            y0, x0, y1, x1 = prov.boxes[row]
            inside = dataset.masks[i, :, y0:y1, x0:x1].flatten(1).sum(-1).float()
            self.table[image_key(cut.batch(np.array([row]))[0])] = inside / total[i]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        rows = []
        for image in images:
            key = image_key(image)
            noise = torch.randn(self.dim, generator=torch.Generator().manual_seed(int(key[:8], 16)))
            rows.append(self.directions @ self.table[key] + self.noise * noise)
        return torch.stack(rows)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            if text in self.names:
                rows.append(self.directions[:, self.names.index(text)])
            else:
                seed = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)
                rows.append(self.unrelated @ torch.randn(
                    self.unrelated.shape[1], generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)


def setup(world_name: str, seed: int, n_train: int, n_probe: int, method: str = "craft",
          seminmf_on_tokens: bool = False):
    world = load_world(world_name)
    train = world.sample(n_train, seed=seed, split="train")
    probe = world.sample(n_probe, seed=seed, split="test")
    # ViT tokens get the library's default (conceptkit.pipeline.token_factorizer, a top-k
    # autoencoder); --seminmf-on-tokens reproduces the rows measured with Semi-NMF before it
    factorizer = (SemiNMF(N_CONCEPTS, random_state=seed)
                  if seminmf_on_tokens and world.architecture == "vit" else None)
    explainer = conceptkit.ConceptExplainer(world.model(), world.layer, n_concepts=N_CONCEPTS,
                                            method=method,
                                            factorizer=factorizer, seed=seed, progress=False,
                                            importance="gradient_input")
    return world, train, probe, explainer


def evaluate(seed: int = 0, n_train: int = 30, n_probe: int = 30, classes=None,
             clip_variants: dict | None = None, methods=("dissect", "clip", "classes"),
             world: str = "shapes", kind: str = "coefficient", method: str = "craft",
             seminmf_on_tokens: bool = False) -> list[dict]:
    """One row per (class, causal part): the best-matching concept and what each method named it.

    ``kind``: the concept maps (``ClassConcepts.concept_maps(kind=)``) that pick each part's
    best-matching concept and that dissection compares with the masks."""
    world_, train, probe, explainer = setup(world, seed, n_train, n_probe, method,
                                            seminmf_on_tokens)
    clip = OracleClip([probe])
    words = list(probe.concept_names) + vocabulary("imagenet")
    variants = clip_variants if clip_variants is not None else {"clip": {}}
    rows = []
    for c in (range(world_.n_classes) if classes is None else classes):
        index = train.class_indices(c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cc = explainer.fit(train.images[index], c, world_.class_names[c])
        matches = match_concepts(cc.concept_maps(kind=kind), train.masks[index], train.concepts[index],
                                 metric="iou")
        held_out = probe.class_indices(c)
        probe_matches = {m.truth: m.concept for m in match_concepts(
            cc.concept_maps(probe.images[held_out], kind=kind), probe.masks[held_out],
            probe.concepts[held_out], metric="iou")}
        named, seconds = {}, {}
        if "dissect" in methods:
            start = time.perf_counter()
            named["dissect"] = name_concepts(cc, "dissect", probe, kind=kind)
            seconds["dissect"] = time.perf_counter() - start
        if "clip" in methods:
            patch = cc.bank.params.get("patch_size")
            if not patch and cc.bank.method == "ice":  # name_by_clip's crops for ICE concepts
                from conceptkit.concepts._methods import default_patch_size

                patch = default_patch_size(probe.images.shape[-2:])
            if patch:
                clip.add_crops(probe, patch)
            for label, kwargs in variants.items():
                start = time.perf_counter()
                named[label] = name_concepts(cc, "clip", probe, clip, vocabulary=words,
                                             **{"kind": kind, **kwargs})
                seconds[label] = time.perf_counter() - start
        if "classes" in methods:
            start = time.perf_counter()
            named["classes"] = name_concepts(cc, "classes", class_names=list(world_.class_names),
                                             probe=probe)
            seconds["classes"] = time.perf_counter() - start
        for match in matches:
            if match.truth not in world_.class_parts[c]:
                continue
            part = world_.part_names[match.truth]
            row = {"world": world, "seed": seed, "class": c, "part": part, "concept": match.concept,
                   "localisation_iou": match.score, "seconds": seconds}
            if "dissect" in named:  # the part's best match on the held-out class images instead
                entry = named["dissect"][probe_matches.get(match.truth, match.concept)]
                row["dissect_probe_match"] = {"name": entry.name, "score": entry.score,
                                              "trust": entry.trust, "right": entry.name == part}
            for label, names in named.items():
                entry = names[match.concept]
                if label == "classes":   # the named class is another class with this part
                    right = entry.name in world_.class_names and match.truth in \
                        world_.class_parts[world_.class_names.index(entry.name)]
                else:
                    right = entry.name == part
                row[label] = {"name": entry.name, "score": entry.score, "trust": entry.trust,
                              "right": bool(right)}
            rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict[str, dict]:
    labels = [k for k in rows[0] if isinstance(rows[0][k], dict) and "right" in rows[0][k]]
    out = {}
    for label in labels:
        right = [r[label]["right"] for r in rows]
        trust = [r[label]["trust"] for r in rows if r[label]["trust"] is not None]
        score = [r[label]["score"] for r in rows if r[label]["right"]]
        out[label] = {"right": int(sum(right)), "total": len(right),
                      "rate": float(np.mean(right)),
                      "mean_score_when_right": float(np.mean(score)) if score else float("nan"),
                      "mean_trust": float(np.mean(trust)) if trust else float("nan")}
    return out


def _cell(entry: dict) -> str:
    trust = "" if entry["trust"] is None else f", AUC {entry['trust']:.2f}"
    return f"{entry['name']} ({entry['score']:.3f}{trust}){'' if entry['right'] else ' WRONG'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--worlds", nargs="+", default=["shapes"], choices=list(WORLDS))
    parser.add_argument("--n-train", type=int, default=30)
    parser.add_argument("--n-probe", type=int, default=30)
    parser.add_argument("--kind", default="coefficient",
                        help="concept maps for the matching and dissection: coefficient (the naming "
                             "default), auto (the explanation's display default), scale_matched, gradient")
    parser.add_argument("--method", default="craft", choices=["craft", "ice", "ace"],
                        help="discovery method of the explanations that are named")
    parser.add_argument("--seminmf-on-tokens", action="store_true",
                        help="explain ViT tokens with Semi-NMF (the default before the top-k "
                             "autoencoder), as the earlier rows in BENCHMARKS.md were measured")
    parser.add_argument("--variants", action="store_true",
                        help="also run the CLIP variants (reference top_k / prior, cos3, whole images)")
    args = parser.parse_args(argv)
    variants = {"clip": {}}
    if args.variants:
        variants.update({
            "clip_resized_crops": {"crop_activation": "resized"},
            "clip_ref_topk100_concept_prior": {"top_k": 100, "prior": "concepts"},
            "clip_concept_prior": {"prior": "concepts"},
            "clip_cos3": {"similarity": "cos3"},
            "clip_whole_images": {"patch_size": None},
            "clip_all_classes": {"class_images_only": False},
        })
    rows = []
    start = time.perf_counter()
    for world in args.worlds:
        for seed in args.seeds:
            rows += evaluate(seed, args.n_train, args.n_probe, clip_variants=variants, world=world,
                             kind=args.kind, method=args.method,
                             seminmf_on_tokens=args.seminmf_on_tokens)
    print(f"{len(rows)} (class, causal part) pairs: worlds {', '.join(args.worlds)}, "
          f"seeds {args.seeds}, maps {args.kind}; {time.perf_counter() - start:.0f} s")
    for row in rows:
        cells = "  ".join(f"{k}={_cell(row[k])}" for k in row
                          if isinstance(row[k], dict) and "right" in row[k])
        print(f"{row['world']} seed {row['seed']} class {row['class']} {row['part']:<19} "
              f"concept {row['concept']}"
              f" (loc. IoU {row['localisation_iou']:.2f}): {cells}")
    for world in args.worlds:
        for label, s in summarise([r for r in rows if r["world"] == world]).items():
            print(f"{world:<9} {label:<34} named right {s['right']}/{s['total']} "
                  f"({100 * s['rate']:.0f} %), mean score when right "
                  f"{s['mean_score_when_right']:.3f}, mean trust {s['mean_trust']:.3f}")
    for label, s in summarise(rows).items():
        print(f"all       {label:<34} named right {s['right']}/{s['total']} ({100 * s['rate']:.0f} %), "
              f"mean score when right {s['mean_score_when_right']:.3f}, mean trust "
              f"{s['mean_trust']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
