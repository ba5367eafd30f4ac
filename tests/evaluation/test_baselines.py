"""Baseline routers: semantic kNN (k tuned on validation), task-label router, choice baselines."""

import numpy as np
import pytest

from ray_router.evaluation.baselines import (
    TaskLabelRouter,
    best_single_choice,
    cheapest_choice,
    random_choice,
)
from ray_router.evaluation.metrics import roc_auc_per_target
from ray_router.model.knn_router import DEFAULT_K_GRID, KnnRouter, mean_log_loss

NAN = np.nan


def planted_clusters(n: int, rng: np.random.Generator, centres: np.ndarray, accuracy: np.ndarray):
    """Embeddings around random cluster centres; each cluster has its own per-target accuracy."""
    cluster = rng.integers(0, len(centres), size=n)
    emb = centres[cluster] + 0.6 * rng.normal(size=(n, centres.shape[1]))
    labels = (rng.random((n, accuracy.shape[1])) < accuracy[cluster]).astype(float)
    return emb, labels


def test_knn_beats_the_constant_predictor_and_chooses_k_on_validation():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16)) * 2
    accuracy = rng.choice([0.1, 0.5, 0.9], size=(6, 3))
    emb_train, y_train = planted_clusters(1500, rng, centres, accuracy)
    emb_val, y_val = planted_clusters(400, rng, centres, accuracy)
    emb_test, y_test = planted_clusters(400, rng, centres, accuracy)
    y_train[rng.random(y_train.shape) < 0.1] = NAN  # missing labels are ignored per target

    assert max(DEFAULT_K_GRID) > 100
    knn = KnnRouter().fit(emb_train, y_train, emb_val, y_val)
    assert sorted(knn.validation_log_loss_) == list(DEFAULT_K_GRID)
    assert knn.k_ == min(knn.validation_log_loss_, key=knn.validation_log_loss_.get)
    assert 5 <= knn.k_ <= 200  # tiny k is noisy; k beyond a cluster's size mixes clusters
    proba = knn.predict_proba(emb_test)
    assert proba.shape == (400, 3) and np.isfinite(proba).all()
    constant = np.broadcast_to(knn.prior_, proba.shape)
    assert mean_log_loss(proba, y_test) < mean_log_loss(constant, y_test) - 0.1
    assert np.nanmean(roc_auc_per_target(proba, y_test)) > 0.75

    # the choice follows the validation data: labels unrelated to the prompts favour the widest k
    noise = (rng.random(y_val.shape) < 0.5).astype(float)
    assert KnnRouter().fit(emb_train, y_train, emb_val, noise).k_ == max(DEFAULT_K_GRID)
    with pytest.raises(ValueError, match="choose k"):
        KnnRouter().fit(emb_train, y_train)


def test_knn_neighbour_accuracy_by_hand():
    angles = np.array([0.0, 0.1, 0.2, 3.0, 3.1])
    emb_train = np.column_stack([np.cos(angles), np.sin(angles)]) * np.array([[1], [5], [2], [1], [3]])  # norm ignored
    labels = np.array([[1, 0], [1, NAN], [0, NAN], [0, 1], [0, 1]], dtype=float)
    query = np.array([[1.0, 0.02]])  # nearest: angle 0, then 0.1, then 0.2
    exact = KnnRouter(k=2, prior_strength=0.0).fit(emb_train, labels)
    # target 1: the only labelled neighbour among the two nearest is the first (label 0)
    np.testing.assert_allclose(exact.predict_proba(query), [[1.0, 0.0]])
    smoothed = KnnRouter(k=3, prior_strength=1.0).fit(emb_train, labels)
    prior = np.array([2 / 5, 2 / 3])
    np.testing.assert_allclose(smoothed.prior_, prior)
    np.testing.assert_allclose(smoothed.predict_proba(query), [[(2 + prior[0]) / 4, (0 + prior[1]) / 2]])
    # no labelled neighbour for target 1 among the 2 nearest (angles 0.1 and 0.2) -> its prior
    unlabelled = np.array([[1, 0], [1, NAN], [0, NAN], [0, NAN], [0, 1]], dtype=float)
    between = np.array([[np.cos(0.15), np.sin(0.15)]])
    no_label_near = KnnRouter(k=2, prior_strength=0.0).fit(emb_train, unlabelled)
    np.testing.assert_allclose(no_label_near.predict_proba(between)[0, 1], 0.5)
    # k larger than the training set is capped
    assert KnnRouter(k=50).fit(emb_train, labels).k_ == 5


def test_task_label_router_equals_per_task_accuracies():
    tasks = np.array(["math", "math", "math", "code", "code", None], dtype=object)
    labels = np.array([[1, 0], [1, 1], [0, NAN], [0, 1], [1, 1], [1, 0]], dtype=float)
    router = TaskLabelRouter().fit(tasks, labels)
    global_accuracy = [4 / 6, 3 / 5]
    np.testing.assert_allclose(router.global_accuracy_, global_accuracy)
    proba = router.predict_proba(["code", "math", "poetry", None])
    np.testing.assert_allclose(proba, [[1 / 2, 1.0], [2 / 3, 1 / 2], global_accuracy, global_accuracy])
    # a target never labelled on a task falls back to its global accuracy
    only_missing = TaskLabelRouter().fit(["a", "b"], np.array([[1, NAN], [0, 1]], dtype=float))
    np.testing.assert_allclose(only_missing.predict_proba(["a"]), [[1.0, 1.0]])
    with pytest.raises(ValueError, match="no known label"):
        TaskLabelRouter().fit(["a"], np.array([[1, NAN]]))


def test_choice_baselines():
    allowed = np.array([False, True, False, True])
    choice = random_choice(1000, 4, seed=3, allowed=allowed)
    assert set(choice.tolist()) == {1, 3}
    np.testing.assert_array_equal(choice, random_choice(1000, 4, seed=3, allowed=allowed))
    assert set(random_choice(1000, 4, seed=0).tolist()) == {0, 1, 2, 3}
    cost = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 5.0]])
    assert cheapest_choice(cost).tolist() == [1, 0]
    reference = np.array([[0, 1, 1], [1, 1, 0], [0, 1, 0]], dtype=float)
    assert best_single_choice(4, reference).tolist() == [1, 1, 1, 1]
