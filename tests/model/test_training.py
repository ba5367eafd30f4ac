"""Ensemble training of SharedTrunkNet: plain in-process and on Ray Train (synthetic data)."""

from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from ray_router.errors import UserError
from ray_router.model.training import (
    MEMBER_FILE_GLOB,
    MemberTrainer,
    TrainRunConfig,
    TrunkConfig,
    build_members,
    fit_ensemble,
    member_split,
    train_member,
)
from ray_router.model.trunk_net import ensemble_proba, masked_bce_loss, masked_pairwise_loss

SMALL = TrunkConfig(hidden=(32, 16), batch_size=64, max_epochs=25, patience=4, n_seeds=4, keep_best=2)


@pytest.fixture(scope="module")
def problem() -> tuple[np.ndarray, np.ndarray]:
    """A learnable 3-target problem: labels from noisy linear scores, 20 % of labels missing."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 12)).astype(np.float32)
    scores = x @ rng.normal(size=(12, 3)) + 0.5 * rng.normal(size=(700, 3))
    y = (scores > np.array([0.0, 1.0, -1.0])).astype(np.float32)
    y[rng.random(y.shape) < 0.2] = np.nan
    return x, y


@pytest.fixture(scope="module")
def plain(problem):
    return fit_ensemble(*problem, SMALL, use_ray=False)


def _bce(p: np.ndarray, y: np.ndarray) -> float:
    known = ~np.isnan(y)
    p = np.clip(p, 1e-7, 1 - 1e-7)
    yk = y[known]
    return float(-np.mean(yk * np.log(p[known]) + (1 - yk) * np.log(1 - p[known])))


def test_members_beat_the_constant_prediction_baseline(problem, plain):
    x, y = problem
    for seed in range(SMALL.n_seeds):
        train_rows, val_rows = member_split(len(x), seed, SMALL)
        rates = np.nanmean(y[train_rows], axis=0)
        baseline = _bce(np.broadcast_to(rates, y[val_rows].shape), y[val_rows])
        assert plain.val_losses[seed] < 0.7 * baseline
    # the ensemble too, on rows it partly never saw (each member holds out its own 15 %)
    overall = _bce(np.broadcast_to(np.nanmean(y, axis=0), y.shape), y)
    assert _bce(plain.predict_proba(x), y) < 0.7 * overall


def test_ensemble_keeps_the_best_seeds_and_averages_them(problem, plain):
    x, _ = problem
    assert len(plain.val_losses) == SMALL.n_seeds and len(plain.history) == SMALL.n_seeds
    assert plain.kept == list(np.argsort(plain.val_losses, kind="stable")[: SMALL.keep_best])
    assert len(plain.members) == SMALL.keep_best
    singles = [ensemble_proba([m], x) for m in build_members(plain.members, 12, 3, SMALL)]
    proba = plain.predict_proba(x)
    assert proba.shape == (len(x), 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba, np.mean(singles, axis=0), rtol=1e-12)


def test_early_stopping_restores_the_best_weights(problem):
    x, y = problem
    config = SMALL.model_copy(update={"min_delta": 0.0, "max_epochs": 60, "patience": 3, "lr": 0.02})
    member = train_member(x, y, 1, config)
    curve = member.history["val_loss"]
    assert member.val_loss == min(curve) and curve[member.best_epoch - 1] == member.val_loss
    assert len(curve) == member.best_epoch + config.patience < config.max_epochs  # it did stop early
    _, val_rows = member_split(len(x), 1, config)
    (model,) = build_members([member.state_dict], x.shape[1], y.shape[1], config)
    with torch.no_grad():
        loss = masked_bce_loss(model(torch.from_numpy(x[val_rows])), torch.from_numpy(y[val_rows]))
    assert loss.item() == member.val_loss


def test_the_pairwise_weight_trades_cross_entropy_for_ranking_and_early_stopping_reads_the_cross_entropy(problem):
    """After the same epochs from the same seed, a member trained with a heavy ranking term orders each training
    query's targets better than the plain member and fits their cross-entropy worse; its validation curve is the
    cross-entropy of its weights, as without it."""
    x, y = problem
    fast = SMALL.model_copy(update={"lr": 0.01})
    ranked_config = fast.model_copy(update={"pairwise_weight": 5.0})
    trainers = [MemberTrainer(x, y, 0, fast), MemberTrainer(x, y, 0, ranked_config)]
    for trainer in trainers:
        for _ in range(30):
            trainer.run_epoch()
        trainer.model.eval()
    with torch.no_grad():
        (plain_rank, plain_bce), (ranked_rank, ranked_bce) = (
            [loss(t.model(t.x_train), t.y_train).item() for loss in (masked_pairwise_loss, masked_bce_loss)]
            for t in trainers
        )
        ranked = trainers[1]
        assert masked_bce_loss(ranked.model(ranked.x_val), ranked.y_val).item() == ranked.history["val_loss"][-1]
    assert ranked_rank < plain_rank and ranked_bce > plain_bce


def test_a_seed_is_reproducible_and_seeds_differ(problem):
    x, y = problem
    short = SMALL.model_copy(update={"max_epochs": 4})
    first, again, other = (train_member(x, y, s, short) for s in (2, 2, 3))
    assert all(torch.equal(first.state_dict[k], again.state_dict[k]) for k in first.state_dict)
    assert not torch.equal(first.state_dict["head.weight"], other.state_dict["head.weight"])
    split_a, split_b = member_split(len(x), 2, SMALL)[1], member_split(len(x), 3, SMALL)[1]
    assert len(split_a) == round(0.15 * len(x)) and set(split_a) != set(split_b)


def test_config_rejects_inconsistent_values():
    with pytest.raises(pydantic.ValidationError, match="keep_best"):
        TrunkConfig(n_seeds=3, keep_best=5)
    with pytest.raises(pydantic.ValidationError, match="same length"):
        TrunkConfig(hidden=(64,), dropout=(0.1, 0.1))
    with pytest.raises(pydantic.ValidationError, match="learning_rate"):
        TrunkConfig(learning_rate=0.1)  # a typo in a YAML file is an error, not a silent default


def test_bad_labels_and_shapes_are_user_errors(problem):
    x, y = problem
    with pytest.raises(UserError, match="0, 1 or NaN"):
        fit_ensemble(x, np.where(np.isnan(y), 2.0, y), SMALL, use_ray=False)
    with pytest.raises(UserError, match="same n"):
        fit_ensemble(x[:-1], y, SMALL, use_ray=False)


RAY_CONFIG = SMALL.model_copy(update={"n_seeds": 2, "keep_best": 2})


@pytest.fixture(scope="module")
def ray_runs(ray_cluster, problem, tmp_path_factory):
    """Two Ray Train runs into one storage path: 2 seeds reporting every epoch, then the same run
    extended to 3 seeds with the default (throttled) reports."""
    storage = str(tmp_path_factory.mktemp("ray_train"))
    every_epoch = TrainRunConfig(storage_path=storage, report_interval_s=0.0)
    first = fit_ensemble(*problem, RAY_CONFIG, every_epoch, use_ray=True)
    more_seeds = RAY_CONFIG.model_copy(update={"n_seeds": 3})
    extended = fit_ensemble(*problem, more_seeds, TrainRunConfig(storage_path=storage))
    return first, extended


@pytest.mark.ray
def test_ray_train_gives_the_plain_paths_members(problem, ray_runs):
    """Same seed, same member, bit for bit (both paths train a member with the same torch threads)."""
    first, _ = ray_runs
    plain = fit_ensemble(*problem, RAY_CONFIG, use_ray=False)
    assert first.resumed == [] and first.run_path is not None
    assert first.kept == plain.kept and first.history == plain.history
    for ray_member, plain_member in zip(first.members, plain.members):
        assert all(torch.equal(ray_member[k], plain_member[k]) for k in plain_member)


@pytest.mark.ray
def test_ray_train_resumes_without_retraining_finished_seeds(ray_runs):
    first, extended = ray_runs
    assert extended.run_path == first.run_path
    assert extended.resumed == [0, 1]  # their metadata names the earlier attempt: loaded, not trained
    assert extended.history[:2] == first.history and extended.val_losses[:2] == first.val_losses
    assert len(extended.history[2]["val_loss"]) > 0
    latest = max(p for p in Path(first.run_path).glob("checkpoint_*") if p.is_dir())
    assert len(list(latest.glob(MEMBER_FILE_GLOB))) == 3
