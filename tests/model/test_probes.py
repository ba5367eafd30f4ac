"""Layer-probe statistics on synthetic data whose answer is known."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.preprocessing import StandardScaler

from ray_router.model.probes import (
    effective_dimensionality,
    fisher_separability,
    probe_auc,
    rank_auc,
    reduce_features,
)


def planted_layers(n: int = 400, d: int = 50, noise_layers: int = 4, shift: float = 1.0, seed: int = 0):
    """Labels y, a list of pure-noise layers, and one layer with a class-separating direction."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    noise = [rng.normal(size=(n, d)) for _ in range(noise_layers)]
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    planted = rng.normal(size=(n, d)) + shift * np.outer(y, direction)
    return y, noise, planted


def test_fisher_ranks_planted_layer_above_noise_layers():
    y, noise, planted = planted_layers(shift=1.5)
    noise_j = [fisher_separability(reduce_features(x, 20), y) for x in noise]
    planted_j = fisher_separability(reduce_features(planted, 20), y)
    assert planted_j > 3 * max(noise_j)


def test_fisher_is_the_documented_formula():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(60, 4)) * [1.0, 2.0, 0.5, 3.0]
    y = np.r_[np.zeros(25, int), np.ones(35, int)]
    mu0, mu1 = Z[y == 0].mean(0), Z[y == 1].mean(0)
    scatter = sum((Z[y == c] - m).T @ (Z[y == c] - m) for c, m in ((0, mu0), (1, mu1)))
    pooled = scatter / (60 - 2)
    eps = 0.1 * np.trace(pooled) / 4
    expected = (mu1 - mu0) @ np.linalg.inv(pooled + eps * np.eye(4)) @ (mu1 - mu0)
    assert fisher_separability(Z, y, shrinkage=0.1) == pytest.approx(expected, rel=1e-10)


def test_fisher_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        fisher_separability(np.ones((10, 3)), np.zeros(10))


def test_effective_dimensionality_of_isotropic_gaussian_is_its_dimension():
    Z = np.random.default_rng(2).normal(size=(20_000, 20))
    assert effective_dimensionality(Z) == pytest.approx(20, abs=0.5)


def test_effective_dimensionality_of_rank_one_signal_is_one():
    rng = np.random.default_rng(3)
    Z = np.outer(rng.normal(size=5_000), rng.normal(size=20)) + 0.01 * rng.normal(size=(5_000, 20))
    assert effective_dimensionality(Z) == pytest.approx(1.0, abs=0.05)


def test_probe_auc_is_chance_on_noise_and_high_on_the_planted_layer():
    y, noise, planted = planted_layers(n=600, shift=2.0)
    assert probe_auc(reduce_features(noise[0], 20), y) == pytest.approx(0.5, abs=0.08)
    assert probe_auc(reduce_features(planted, 20), y) > 0.85


def test_probe_auc_equals_sklearn_cross_validated_roc_auc():
    y, _, planted = planted_layers(n=300, shift=0.5)
    Z = reduce_features(planted, 10)
    reference = cross_val_score(
        LogisticRegression(max_iter=1000),
        StandardScaler().fit_transform(Z),
        y,
        cv=StratifiedKFold(5, shuffle=True, random_state=7),
        scoring="roc_auc",
    ).mean()
    assert probe_auc(Z, y, folds=5, seed=7) == pytest.approx(reference, abs=1e-9)


def test_probe_auc_refuses_too_few_rows_per_class():
    y = np.r_[np.zeros(50, int), np.ones(3, int)]
    with pytest.raises(ValueError, match="at least 5 rows per class"):
        probe_auc(np.random.default_rng(0).normal(size=(53, 4)), y)


def test_reduce_features_caps_k_and_is_deterministic():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(30, 8)).astype(np.float32)
    assert reduce_features(X, 64).shape == (30, 8)  # capped at d
    assert reduce_features(X[:5], 64).shape == (5, 4)  # capped at n - 1
    X_wide = rng.normal(size=(200, 300))
    first, second = reduce_features(X_wide, 16), reduce_features(X_wide, 16)
    assert first.shape == (200, 16) and first.dtype == np.float64
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first.mean(axis=0), 0.0, atol=1e-10)


def test_rank_auc_equals_sklearn_roc_auc_with_ties():
    rng = np.random.default_rng(5)
    y = (rng.random(500) < 0.3).astype(np.int64)
    scores = np.round(rng.normal(size=500) + y, 1)  # many tied scores
    assert rank_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_features_that_never_vary_separate_nothing():
    # the embedding layer's "last" pooling of a chat template: the same token for every prompt
    y = np.array([0, 1] * 20)
    constant = np.ones((40, 8))
    assert fisher_separability(reduce_features(constant, 4), y) == 0.0
    assert fisher_separability(np.column_stack([y, y]).astype(float), y) == np.inf  # no within-class spread at all
