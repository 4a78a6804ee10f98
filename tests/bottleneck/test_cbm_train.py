"""train_cbm: the four modes, what each head is trained on, determinism, splits, early stopping.

Synthetic data with a known rule: class c is caused by concepts 2c and 2c+1 (both present,
the other class concepts absent); the last two concepts are distractors; features are a fixed
random linear map of the concepts plus noise.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from conceptkit.bottleneck import ConceptBottleneckModel, evaluate_cbm, train_cbm

N_CLASSES, N_DISTRACTORS, DIM = 3, 2, 16
K = 2 * N_CLASSES + N_DISTRACTORS


def synthetic(n, seed, noise=0.3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    concepts = np.zeros((n, K), np.float32)
    concepts[np.arange(n), 2 * labels] = 1
    concepts[np.arange(n), 2 * labels + 1] = 1
    concepts[:, 2 * N_CLASSES:] = rng.random((n, N_DISTRACTORS)) < 0.4
    mixing = np.random.default_rng(1234).normal(size=(K, DIM)).astype(np.float32)
    x = concepts @ mixing + noise * rng.normal(size=(n, DIM)).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(concepts), torch.from_numpy(labels)


TRAIN, VAL, TEST = synthetic(600, 0), synthetic(200, 1), synthetic(400, 2)


def fresh_model(bottleneck="sigmoid", seed=0, encoder=None):
    torch.manual_seed(seed)
    return ConceptBottleneckModel(encoder or nn.Linear(DIM, K), K, N_CLASSES, bottleneck=bottleneck)


FAST = dict(epochs=20, lr=2e-2, batch_size=128, seed=0, progress=False)


@pytest.mark.parametrize("mode", ["independent", "sequential", "joint"])
def test_bottleneck_modes_learn_concepts_and_task(mode):
    model = fresh_model()
    history = train_cbm(model, TRAIN, VAL, mode=mode, **FAST)
    result = evaluate_cbm(model, TEST)
    assert result.concept_accuracy >= 0.97
    assert result.task_accuracy >= 0.97
    assert history.mode == mode and model.trained_mode == mode
    assert [s.stage for s in history.stages] == (["joint"] if mode == "joint" else ["concepts", "head"])
    assert not model.training


def test_standard_mode_ignores_concepts():
    model = fresh_model()
    history = train_cbm(model, TRAIN, VAL, mode="standard", **FAST)
    result = evaluate_cbm(model, TEST)
    assert history.concept_loss_weight == 0.0
    # a weight standard mode would ignore is refused, not recorded as 0 without a word
    with pytest.raises(ValueError, match="`concept_loss_weight`=5 weighs the concept loss"):
        train_cbm(fresh_model(), TRAIN, VAL, mode="standard", concept_loss_weight=5.0, **FAST)
    assert result.task_accuracy >= 0.97
    # the unsupervised bottleneck does not line up with the concept labels
    assert result.concept_accuracy < 0.9


def test_independent_head_depends_only_on_true_concepts():
    """Two models with the same head but different encoders get the same independent head."""
    heads = []
    for encoder_seed in (10, 11):
        model = fresh_model(seed=0)
        torch.manual_seed(encoder_seed)
        model.concept_encoder.reset_parameters()
        # patience >= epochs: both stage-1 runs draw the same number of shuffles
        train_cbm(model, TRAIN, VAL, mode="independent", patience=100, **FAST)
        heads.append(model.head.state_dict())
    for key in heads[0]:
        torch.testing.assert_close(heads[0][key], heads[1][key], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["independent", "sequential"])
def test_head_validation_loss_is_measured_on_the_right_inputs(mode):
    model = fresh_model("logits")
    history = train_cbm(model, TRAIN, VAL, mode=mode, **FAST)
    head_stage = history.stages[1]
    x, concepts, labels = VAL
    with torch.no_grad():
        values = (model.true_to_bottleneck(concepts) if mode == "independent"
                  else model(x).concepts)
        expected = nn.functional.cross_entropy(model.head(values), labels).item()
    assert head_stage.val_loss[head_stage.best_epoch] == pytest.approx(expected, rel=1e-5)


def test_joint_loss_sums_weighted_balanced_bce_over_concepts():
    model = fresh_model()
    lam = 0.5
    history = train_cbm(model, TRAIN, VAL, mode="joint", concept_loss_weight=lam, **FAST)
    stage = history.stages[0]
    x, concepts, labels = VAL
    pos_weight = torch.tensor(history.pos_weight)
    with torch.no_grad():
        out = model(x)
        bce = nn.functional.binary_cross_entropy_with_logits(
            out.concept_logits, concepts, pos_weight=pos_weight, reduction="none").mean(0)
        expected = nn.functional.cross_entropy(out.class_logits, labels) + lam * bce.sum()
    assert stage.val_loss[stage.best_epoch] == pytest.approx(expected.item(), rel=1e-5)
    n_pos = TRAIN[1].sum(0).numpy()
    np.testing.assert_allclose(history.pos_weight, len(TRAIN[1]) / n_pos - 1, rtol=1e-6)


def test_same_seed_same_model_and_global_rng_untouched():
    states = []
    short = {**FAST, "epochs": 4, "seed": 3}  # determinism needs no convergence
    for _ in range(2):
        model = fresh_model()
        before = torch.random.get_rng_state()
        train_cbm(model, TRAIN, VAL, mode="joint", **short)
        assert torch.equal(before, torch.random.get_rng_state())
        states.append(model.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0)
    other = fresh_model()
    train_cbm(other, TRAIN, VAL, mode="joint", **{**short, "seed": 4})
    assert not torch.equal(other.head.weight, states[0]["head.weight"])


def test_without_val_data_a_seeded_fraction_is_held_out():
    model = fresh_model()
    history = train_cbm(model, TRAIN, mode="joint", val_fraction=0.25, epochs=2, seed=0,
                        progress=False)
    assert history.val_source == "split"
    assert history.n_val == 150 and history.n_train == 450
    # the held-out rows are not used for the positive weights: they come from the 450 rows only
    n_pos_all = TRAIN[1].sum(0).numpy()
    assert not np.allclose(history.pos_weight, len(TRAIN[1]) / n_pos_all - 1)


def test_early_stopping_restores_the_best_epoch():
    model = fresh_model()
    small_noisy = synthetic(30, 5, noise=2.0)  # overfits quickly: the val loss turns up
    history = train_cbm(model, small_noisy, VAL, mode="joint", epochs=300, patience=3, lr=0.05,
                        batch_size=32, seed=0, progress=False)
    stage = history.stages[0]
    assert stage.stopped_early
    assert stage.best_epoch == int(np.argmin(stage.val_loss))
    assert stage.epochs_run == stage.best_epoch + 1 + 3
    x, concepts, labels = VAL
    with torch.no_grad():
        out = model(x)
        bce = nn.functional.binary_cross_entropy_with_logits(
            out.concept_logits, concepts, pos_weight=torch.tensor(history.pos_weight),
            reduction="none").mean(0)
        loss = nn.functional.cross_entropy(out.class_logits, labels) + bce.sum()
    assert loss.item() == pytest.approx(min(stage.val_loss), rel=1e-5)


class TripleDataset(Dataset):
    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, i):
        return tuple(t[i] for t in self.tensors)


def test_dataset_input_matches_tensor_input():
    a, b = fresh_model(), fresh_model()
    train_cbm(a, TRAIN, VAL, mode="sequential", epochs=3, seed=0, progress=False)
    train_cbm(b, TripleDataset(TRAIN), TripleDataset(VAL), mode="sequential", epochs=3, seed=0,
              progress=False)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=1e-5, atol=1e-6)


def test_a_dataset_of_float_labels_or_nan_inputs_is_refused_as_tensors_are():
    x, c, y = TRAIN
    # 2.7 became class 2 through the Dataset path (the tensor path refused float labels)
    with pytest.raises(TypeError, match="labels must hold integer class indices"):
        train_cbm(fresh_model(), TripleDataset((x, c, y.float() + 0.7)), TripleDataset(VAL),
                  epochs=1, progress=False)
    bad = x.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="contain NaN or Inf"):
        train_cbm(fresh_model(), TripleDataset((bad, c, y)), TripleDataset(VAL), epochs=1,
                  progress=False)


def test_a_run_that_diverges_is_an_error_not_its_best_finite_epoch():
    # lr 1e30: validation loss 5e30 in the first epoch, NaN after; it returned without a word
    with pytest.raises(ValueError, match="diverged at epoch"):
        train_cbm(fresh_model(), TRAIN, VAL, mode="joint", epochs=3, lr=1e30, seed=0,
                  progress=False)


def test_sgd_optimizer_and_frozen_encoder():
    model = fresh_model()
    history = train_cbm(model, TRAIN, VAL, mode="joint", optimizer="sgd", epochs=5, lr=0.05,
                        batch_size=128, seed=0, progress=False)
    assert history.stages[0].val_loss[-1] < history.stages[0].val_loss[0]
    frozen = fresh_model()
    frozen.concept_encoder.requires_grad_(False)
    before = frozen.concept_encoder.weight.clone()
    train_cbm(frozen, TRAIN, VAL, mode="joint", epochs=2, seed=0, progress=False)
    torch.testing.assert_close(frozen.concept_encoder.weight, before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="nothing to train"):
        train_cbm(frozen, TRAIN, VAL, mode="sequential", epochs=2, seed=0, progress=False)


def test_no_seed_draws_one_and_records_it_so_the_run_can_be_repeated():
    first = fresh_model()
    history = train_cbm(first, TRAIN, mode="joint", val_fraction=0.25, epochs=2, progress=False)
    assert isinstance(history.seed, int) and history.seed >= 0
    again = fresh_model()
    train_cbm(again, TRAIN, mode="joint", val_fraction=0.25, epochs=2, seed=history.seed,
              progress=False)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
