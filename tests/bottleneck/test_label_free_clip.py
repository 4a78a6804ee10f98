"""ClipEncoders: open_clip plumbing with a tiny random model, offline errors, text-embedding cache."""

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from conceptkit.bottleneck import CAVBank, ClipEncoders, LabelFreeCBM, PosthocCBM

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8,
                   "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_NAME = "conceptkit-tiny-test"


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_config")
    (folder / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return TINY_NAME


@pytest.fixture(scope="module")
def tiny_clip(tiny_config):
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_config, pretrained=None)
    return model, open_clip.get_tokenizer(tiny_config)


OPENAI_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


def test_open_clip_model_object_is_wrapped_exactly(tiny_clip):
    model, tokenizer = tiny_clip
    model.train()
    clip = ClipEncoders.from_open_clip(model, tokenizer)
    texts = ["red disk", "blue square", "a striped patch"]
    with torch.no_grad():
        model.eval()
        expected_text = F.normalize(model.encode_text(tokenizer(texts)), dim=1)
        images = torch.rand(4, 3, 32, 32)
        expected_image = F.normalize(model.encode_image((images - OPENAI_MEAN) / OPENAI_STD), dim=1)
        model.train()
    torch.testing.assert_close(clip.text_embeddings(texts), expected_text)
    torch.testing.assert_close(clip.image_embeddings(images), expected_image)
    assert model.training  # our calls leave the user's flags alone
    assert clip.checkpoint_id.startswith("weights-sha256:")
    big = clip.image_embeddings(torch.rand(2, 3, 48, 40))  # resized and centre-cropped to 32
    assert big.shape == (2, 32)
    np.testing.assert_allclose(big.norm(dim=1).numpy(), 1.0, rtol=1e-5)


def test_pil_preprocess_path_agrees_with_tensor_path(tiny_clip):
    model, tokenizer = tiny_clip
    preprocess = open_clip.image_transform(32, is_train=False)
    images = torch.rand(3, 3, 32, 32)
    tensor_path = ClipEncoders.from_open_clip(model, tokenizer).image_embeddings(images)
    pil_path = ClipEncoders.from_open_clip(model, tokenizer, preprocess).image_embeddings(images)
    # PIL rounds pixels to 8 bits; otherwise the same pipeline
    assert float((tensor_path * pil_path).sum(1).min()) > 0.999


def test_loading_by_name_random_and_from_a_local_file(tiny_config, tmp_path):
    from safetensors.torch import save_file

    random_init = ClipEncoders.from_open_clip(tiny_config)
    path = tmp_path / "tiny.safetensors"
    save_file(random_init.module.state_dict(), str(path))
    from_file = ClipEncoders.from_open_clip(tiny_config, pretrained=str(path))
    texts = ["orange bar", "cyan diamond"]
    torch.testing.assert_close(from_file.text_embeddings(texts), random_init.text_embeddings(texts))
    assert from_file.checkpoint_id.startswith("file-sha256:")
    assert from_file.model_id == f"open_clip:{tiny_config}"


def test_unknown_names_and_offline_tags_give_clear_errors(tiny_config, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(ValueError, match="not an open_clip model name.*ViT-B-32"):
        ClipEncoders.from_open_clip("ViT-B-3")
    with pytest.raises(ValueError, match="local checkpoint file"):
        ClipEncoders.from_open_clip(tiny_config, pretrained="no-such-tag")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"(?s)Failed to download.*local-dir:.*HF_HUB_OFFLINE"):
        ClipEncoders.from_open_clip("ViT-B-32", pretrained="openai")


def test_wrap_accepts_pairs_and_duck_types_and_rejects_the_rest(tiny_clip):
    model, tokenizer = tiny_clip
    assert isinstance(ClipEncoders.wrap((model, tokenizer)), ClipEncoders)
    with pytest.raises(TypeError, match="tokenizer"):
        ClipEncoders.wrap(model)
    with pytest.raises(TypeError, match="encode_image"):
        ClipEncoders.wrap(object())


class CountingClip:
    """A duck-typed CLIP: text i embeds as a fixed random vector seeded by its content."""

    def __init__(self, checkpoint_id=None):
        self.checkpoint_id = checkpoint_id
        self.text_calls = 0

    def encode_image(self, images):
        return images.flatten(1)[:, :8]

    def encode_text(self, texts):
        self.text_calls += 1
        return torch.stack([torch.randn(8, generator=torch.Generator().manual_seed(sum(map(ord, t))))
                            for t in texts])


def test_text_cache_in_memory_and_on_disk(tmp_path):
    first = ClipEncoders.wrap(CountingClip(checkpoint_id="v1"))
    texts = ["red disk", "blue square"]
    a = first.text_embeddings(texts, cache_dir=tmp_path)
    b = first.text_embeddings(texts, cache_dir=tmp_path)
    assert first._encode_text.__self__.text_calls == 1
    torch.testing.assert_close(a, b)
    np.testing.assert_allclose(a.norm(dim=1).numpy(), 1.0, rtol=1e-6)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    second_clip = CountingClip(checkpoint_id="v1")
    second = ClipEncoders.wrap(second_clip)
    torch.testing.assert_close(second.text_embeddings(texts, cache_dir=tmp_path), a)
    assert second_clip.text_calls == 0  # read from disk
    second.text_embeddings(texts, template="a photo of a {}", cache_dir=tmp_path)
    assert second_clip.text_calls == 1  # another template is another key
    other = CountingClip(checkpoint_id="v2")
    ClipEncoders.wrap(other).text_embeddings(texts, cache_dir=tmp_path)
    assert other.text_calls == 1  # other weights never read v1's cache

    for path in tmp_path.glob("*.safetensors"):
        path.write_bytes(b"garbage")
    fresh = CountingClip(checkpoint_id="v1")
    torch.testing.assert_close(ClipEncoders.wrap(fresh).text_embeddings(texts, cache_dir=tmp_path), a)
    assert fresh.text_calls == 1  # a damaged entry is recomputed


@pytest.mark.parametrize("bad", ["shape", "nan", "int", "not unit"])
def test_a_re_signed_cache_entry_with_wrong_embeddings_is_recomputed(tmp_path, bad):
    from _forge import forge

    texts = ["red disk", "blue square"]
    good = ClipEncoders.wrap(CountingClip(checkpoint_id="v1")).text_embeddings(texts,
                                                                               cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.safetensors")
    value = {"shape": torch.zeros(5, 3), "nan": torch.full_like(good, float("nan")),
             "int": torch.ones(good.shape, dtype=torch.int64), "not unit": good * 3}[bad]
    forge(entry, entry, lambda info, tensors: tensors.update(embeddings=value))
    clip = CountingClip(checkpoint_id="v1")
    torch.testing.assert_close(ClipEncoders.wrap(clip).text_embeddings(texts, cache_dir=tmp_path),
                               good)
    assert clip.text_calls == 1  # not served: recomputed


class LinearClip(torch.nn.Module):
    """A CLIP-like module whose text embedding is a linear layer on a bag of characters."""

    def __init__(self, checkpoint_id="tag-v1"):
        super().__init__()
        self.checkpoint_id = checkpoint_id
        self.text = torch.nn.Linear(26, 8)
        self.text_calls = 0

    def encode_image(self, images):
        return images.flatten(1)[:, :8]

    def encode_text(self, texts):
        self.text_calls += 1
        bags = torch.zeros(len(texts), 26)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if ch.isalpha():
                    bags[i, ord(ch) - 97] += 1
        return self.text(bags)


def test_weights_changed_after_wrapping_never_read_the_old_cache(tmp_path):
    torch.manual_seed(0)
    model = LinearClip()
    clip = ClipEncoders.wrap(model)
    texts = ["red disk", "blue square"]
    before = clip.text_embeddings(texts, cache_dir=tmp_path)
    assert clip.text_embeddings(texts, cache_dir=tmp_path) is not None and model.text_calls == 1
    with torch.no_grad():                      # fine-tuned in place after wrapping
        model.text.weight.add_(1.0)
    after = clip.text_embeddings(texts, cache_dir=tmp_path)
    assert model.text_calls == 2                # recomputed, not the tag's cached embeddings
    assert not torch.allclose(after, before)
    with torch.no_grad():
        expected = F.normalize(model.encode_text(texts), dim=1)
    torch.testing.assert_close(after, expected)
    assert clip.checkpoint_id.startswith("weights-sha256:")   # the tag no longer names them
    clip.text_embeddings(texts, cache_dir=tmp_path)
    assert model.text_calls == 3                # (the 3rd was the direct call) unchanged: cached


def test_unidentified_weights_are_never_cached_on_disk(tmp_path):
    clip = ClipEncoders.wrap(CountingClip(checkpoint_id=None))
    clip.text_embeddings(["a"], cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="template"):
        clip.text_embeddings(["a"], template="no slot")


def test_label_free_and_posthoc_plumbing_with_a_tiny_open_clip(tiny_clip):
    model, tokenizer = tiny_clip
    torch.manual_seed(0)
    images = torch.rand(60, 3, 32, 32)
    labels = torch.arange(3).repeat(20)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    concepts = ["red disk", "blue square", "green triangle", "yellow ring", "striped patch"]
    # random weights: similarities are arbitrary, so the cutoffs are opened wide
    lf = LabelFreeCBM(backbone, (model, tokenizer), concepts, ["one", "two", "three"],
                      clip_cutoff=-1.0, interpretability_cutoff=-1.0, class_similarity_cutoff=1.01,
                      concept_similarity_cutoff=1.01, proj_steps=60, nnz_per_class=2,
                      seed=0, progress=False)
    lf.fit(images, labels)
    assert lf.concepts_ == concepts
    assert lf.predict(images).shape == (60,)
    assert lf.nnz_per_class_.max() <= 2

    clip = ClipEncoders.from_open_clip(model, tokenizer)
    bank = CAVBank.from_clip_text(clip, concepts)
    np.testing.assert_allclose(np.linalg.norm(bank.vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(bank.intercepts, 0.0)
    embeddings = clip.image_embeddings(images)
    pcbm = PosthocCBM(bank, alpha=1e-3, seed=0, progress=False).fit(embeddings, labels)
    assert pcbm.predict(embeddings).shape == (60,)


def test_a_users_clip_model_is_not_moved_for_good(monkeypatch):
    """No device given: the encoders run where the model is and never call ``.to`` on it (a
    CUDA model used to come back on the CPU)."""
    moves = []
    real = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        moves.append(type(self).__name__)
        return real(self, *args, **kwargs)

    class TokenClip(torch.nn.Module):  # open_clip's interface: encode_text takes tokens
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 4)

        def encode_image(self, images):
            return self.w(images.flatten(1)[:, :4])

        def encode_text(self, tokens):
            return self.w(tokens.float())

    model = TokenClip()
    monkeypatch.setattr(torch.nn.Module, "to", spy)
    clip = ClipEncoders.from_open_clip(model, lambda texts: torch.ones(len(texts), 4),
                                       preprocess=lambda image: torch.rand(3, 8, 8))
    assert clip.device == torch.device("cpu")
    clip.image_embeddings(torch.rand(2, 3, 8, 8))
    clip.text_embeddings(["a"])
    assert moves == []
    other = ClipEncoders.from_open_clip(model, lambda texts: torch.ones(len(texts), 4),
                                        preprocess=lambda image: torch.rand(3, 8, 8),
                                        device="cpu:0")  # a device other than the model's
    other.image_embeddings(torch.rand(130, 3, 8, 8))  # three batches of 64
    assert moves == ["TokenClip", "TokenClip"]  # there and back once per call, not per batch
