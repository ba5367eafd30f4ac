"""Out-of-fold predictions: folds by query_id, and no row predicted by a copy of the router that saw it."""

import numpy as np
import pytest

from ray_router.errors import UserError
from ray_router.evaluation.baselines import TaskLabelRouter
from ray_router.model.out_of_fold import fold_ids, out_of_fold_proba, take_rows


def test_folds_are_stable_balanced_and_independent_of_row_order():
    ids = [f"q{i}" for i in range(2000)]
    folds = fold_ids(ids, 5)
    assert set(folds) == set(range(5)) and np.bincount(folds).min() > 330  # about 400 each
    order = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(fold_ids([ids[i] for i in order], 5), folds[order])


def test_each_row_is_predicted_by_the_copy_fitted_on_the_other_folds():
    # one task per row: a router that saw a row predicts its own label; out of fold it can only give the
    # accuracy of the rows it was fitted on
    rng = np.random.default_rng(1)
    labels = (rng.random((60, 3)) < 0.5).astype(float)
    tasks = np.array([f"task {i}" for i in range(60)], dtype=object)
    folds = np.arange(60) % 3
    fitted_on = []

    def fit(rows):
        fitted_on.append(rows)
        return TaskLabelRouter().fit(tasks[rows], labels[rows])

    proba = out_of_fold_proba(fit, tasks, folds, 3)
    assert [set(folds[rows]) for rows in fitted_on] == [{1, 2}, {0, 2}, {0, 1}]
    for fold in range(3):
        np.testing.assert_allclose(proba[folds == fold], np.broadcast_to(labels[folds != fold].mean(axis=0),
                                                                         (20, 3)))
    in_sample = TaskLabelRouter().fit(tasks, labels).predict_proba(tasks)
    np.testing.assert_array_equal(in_sample, labels)  # what the stored rows would be without folds


def test_one_fold_is_refused_and_dict_features_are_sliced_per_key():
    with pytest.raises(UserError, match="two non-empty folds"):
        out_of_fold_proba(lambda rows: None, np.zeros((4, 1)), np.zeros(4, int), 1)
    X = {"a": np.arange(6).reshape(3, 2), "b": np.arange(3)}
    sliced = take_rows(X, np.array([2, 0]))
    np.testing.assert_array_equal(sliced["a"], [[4, 5], [0, 1]])
    np.testing.assert_array_equal(sliced["b"], [2, 0])
