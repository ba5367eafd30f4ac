"""The heads beside SharedTrunkNet: kNN and logistic regression on PCA-reduced feature blocks, the stack that
blends heads with weights chosen on validation rows, temperature calibration, and every head's bundle round
trip, on real SmolLM2 prefill features of RouterBench queries and on synthetic data where the exact outcome
is known."""

import json
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from scipy.special import expit, logit
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from ray_router.data.routing_dataset import RoutingDataset
from ray_router.errors import UserError
from ray_router.evaluation.metrics import expected_calibration_error
from ray_router.features.feature_set import FeatureSet
from ray_router.model.calibration import calibrate, fit_temperatures
from ray_router.model.heads import HEADS, head_from_bundle
from ray_router.model.knn_router import BlockKnnRouter, KnnRouter, mean_log_loss
from ray_router.model.logistic_router import LogisticRouter
from ray_router.model.out_of_fold import take_rows
from ray_router.model.preprocessing import BlockPreprocessor
from ray_router.model.proba_router import ProbaRouter
from ray_router.model.router_training import split_for_training
from ray_router.model.stack_router import StackRouter, simplex_candidates

L3_LAST = "smollm2-135m/L3_last"
L2_MEAN = "smollm2-135m/L2_mean"
L1_LAST_L3_MEAN = "smollm2-135m/L1_last+smollm2-135m/L3_mean"
K_GRID = (1, 5, 20)


@pytest.fixture(scope="module")
def real(small_routerbench, small_features) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    """{"fit" | "val" | "test": (features, labels)} of the small RouterBench slice; "val" is the training holdout."""
    dataset = RoutingDataset.read(small_routerbench)
    fit, val = split_for_training(dataset, 0.15)
    features = FeatureSet.open(str(small_features))
    splits = {"fit": fit, "val": val, "test": dataset.select(split="test")}
    return {name: (features.load(rows.query_ids), rows.labels()) for name, rows in splits.items()}


def unfitted_heads() -> dict:
    """{kind: head} for every new head, with its parameters for the small slice."""
    return {
        "knn": BlockKnnRouter(L3_LAST, pca_k=16, k_grid=K_GRID),
        "logistic": LogisticRouter([L3_LAST, L2_MEAN] * 5 + [L1_LAST_L3_MEAN], pca_k=8),
        "stack": StackRouter([LogisticRouter(L2_MEAN, pca_k=8), BlockKnnRouter(L3_LAST, pca_k=16, k_grid=K_GRID)]),
    }


@pytest.fixture(scope="module")
def fitted(real) -> dict[str, tuple]:
    """{kind: (head, its attributes before fit, what fit returned)} for every new head, fitted on the slice."""
    (X, Y), (X_val, Y_val) = real["fit"], real["val"]
    out = {}
    for kind, head in unfitted_heads().items():
        before = dict(vars(head))
        out[kind] = (head, before, head.fit(X, Y) if kind == "logistic" else head.fit(X, Y, X_val, Y_val))
    return out


def test_every_head_satisfies_the_router_contract(real, fitted):
    X_test, Y_test = real["test"]
    for kind, (head, parameters, returned) in fitted.items():
        assert isinstance(head, ProbaRouter) and returned is head, kind
        assert head.kind == kind and HEADS[kind] is type(head)
        learned = set(vars(head)) - set(parameters)
        assert learned and all(name.endswith("_") for name in learned), (kind, learned)
        assert {name: value for name, value in vars(head).items() if name in parameters} == parameters, kind
        proba = head.predict_proba(X_test)
        assert proba.shape == Y_test.shape, kind
        assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all(), kind
    assert fitted["knn"][0].required_keys == [L3_LAST]
    assert fitted["logistic"][0].required_keys == [L3_LAST, L2_MEAN, "smollm2-135m/L1_last", "smollm2-135m/L3_mean"]
    stack = fitted["stack"][0]
    assert stack.required_keys == [L2_MEAN, L3_LAST]
    assert not hasattr(stack.parts[0], "coef_") and not hasattr(stack.parts[1], "knn_")  # fit fitted copies


def test_logistic_router_is_sklearn_on_each_targets_reduced_block(real):
    (X, Y), (X_test, _) = real["fit"], real["test"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        router = LogisticRouter(L2_MEAN, pca_k=8, C=0.01).fit(X, Y)
    assert router.blocks_ == [(L2_MEAN, 8)] * Y.shape[1] and router.coef_.shape == (Y.shape[1], 8)
    preprocessor = BlockPreprocessor([(L2_MEAN, 8)]).fit(X)
    reduced, reduced_test = (preprocessor.transform_blocks(x)[(L2_MEAN, 8)] for x in (X, X_test))
    fitted_targets = 0
    for target in range(Y.shape[1]):
        known = ~np.isnan(Y[:, target])
        right = Y[known, target] >= 0.5
        if right.all() or not right.any():
            continue
        fitted_targets += 1
        by_hand = LogisticRegression(C=0.01, max_iter=1000).fit(reduced[known], right)
        np.testing.assert_allclose(router.coef_[target], by_hand.coef_[0], rtol=1e-9, atol=1e-12)
        assert router.intercept_[target] == pytest.approx(by_hand.intercept_[0], rel=1e-9)
        np.testing.assert_allclose(router.predict_proba(X_test)[:, target], by_hand.predict_proba(reduced_test)[:, 1],
                                   rtol=1e-9)
    assert fitted_targets >= Y.shape[1] - 2


def test_a_target_without_both_classes_predicts_its_training_accuracy():
    rng = np.random.default_rng(0)
    X = {"a": rng.normal(size=(30, 4)).astype(np.float32)}
    Y = np.column_stack([rng.integers(0, 2, 30), np.ones(30), np.full(30, np.nan), np.full(30, 0.25)]).astype(float)
    Y[::3, 1] = np.nan
    router = LogisticRouter("a", pca_k=3).fit(X, Y)
    proba = router.predict_proba({"a": rng.normal(size=(7, 4)).astype(np.float32)})
    assert (proba[:, 1] == 1.0).all() and (proba[:, 2] == 0.5).all() and (proba[:, 3] == 0.25).all()
    assert len(set(proba[:, 0])) == 7  # the one target with both classes has a regression
    assert np.isnan(router.constant_proba_[0]) and router.coef_[0].any() and not router.coef_[1:].any()


def test_block_knn_router_is_knn_router_on_the_reduced_block(real, fitted):
    (X, Y), (X_val, Y_val), (X_test, _) = real["fit"], real["val"], real["test"]
    router = fitted["knn"][0]
    preprocessor = BlockPreprocessor([(L3_LAST, 16)]).fit(X)
    knn = KnnRouter(k_grid=K_GRID).fit(preprocessor.transform(X), Y, preprocessor.transform(X_val), Y_val)
    assert router.block_ == (L3_LAST, 16) and router.knn_.k_ == knn.k_
    assert router.knn_.validation_log_loss_ == knn.validation_log_loss_ and len(knn.validation_log_loss_) == 3
    assert np.array_equal(router.predict_proba(X_test), knn.predict_proba(preprocessor.transform(X_test)))


def test_block_pca_is_capped_at_rows_minus_one_and_the_block_width():
    rng = np.random.default_rng(1)
    X = {"a": rng.normal(size=(12, 5)).astype(np.float32), "b": rng.normal(size=(12, 2)).astype(np.float32)}
    Y = rng.integers(0, 2, size=(12, 2)).astype(float)
    assert BlockKnnRouter("a+b", k=3).fit(X, Y).block_ == ("a+b", 7)
    assert BlockKnnRouter("a", k=3).fit({"a": X["a"][:4]}, Y[:4]).block_ == ("a", 3)
    assert LogisticRouter(["a", "a+b"], pca_k=6).fit(X, Y).blocks_ == [("a", 5), ("a+b", 6)]


def twin_rows(seed: int = 0):
    """(X, Y, X_val, Y_val): 40 training rows with random features "a" and "b" and random labels of 2 targets, and
    20 validation rows that repeat the first 20 training rows' "a" (a 1-NN on "a" recalls their training labels
    exactly, which Y_val holds) with fresh noise as "b"."""
    rng = np.random.default_rng(seed)
    X = {"a": rng.normal(size=(40, 4)).astype(np.float32), "b": rng.normal(size=(40, 6)).astype(np.float32)}
    Y = (rng.random((40, 2)) < 0.5).astype(float)
    X_val = {"a": X["a"][:20].copy(), "b": rng.normal(size=(20, 6)).astype(np.float32)}
    return X, Y, X_val, Y[:20].copy()


def recall_parts() -> list:
    """A logistic regression on the noise "b", and a 1-NN on "a" without smoothing."""
    return [LogisticRouter("b", pca_k=4), BlockKnnRouter("a", pca_k=4, k=1, prior_strength=0.0)]


def test_stack_weights_follow_the_validation_labels_alone():
    X, Y, X_val, recalled = twin_rows()
    rng = np.random.default_rng(2)
    X_test = {"a": rng.normal(size=(15, 4)).astype(np.float32), "b": rng.normal(size=(15, 6)).astype(np.float32)}
    trusted = StackRouter(recall_parts()).fit(X, Y, X_val, recalled)
    assert np.array_equal(trusted.weights_, [[0.0, 1.0]] * 2)  # the 1-NN predicts these validation labels exactly
    distrusted = StackRouter(recall_parts()).fit(X, Y, X_val, 1 - recalled)  # same training rows
    assert np.array_equal(distrusted.weights_, [[1.0, 0.0]] * 2)
    assert np.array_equal(trusted.predict_proba(X_test), trusted.parts_[1].predict_proba(X_test))
    assert np.array_equal(distrusted.predict_proba(X_test), distrusted.parts_[0].predict_proba(X_test))
    more_test_rows = {key: np.concatenate([rows, rows[::-1]]) for key, rows in X_test.items()}
    distrusted.predict_proba(more_test_rows)
    assert np.array_equal(distrusted.weights_, [[1.0, 0.0]] * 2)


def test_stack_weights_minimise_each_targets_validation_log_loss(real, fitted):
    X_val, Y_val = real["val"]
    stack = fitted["stack"][0]
    grid = np.linspace(0, 1, 21)
    assert stack.weights_.shape == (Y_val.shape[1], 2) and np.allclose(stack.weights_.sum(axis=1), 1)
    logistic, knn = (part.predict_proba(X_val) for part in stack.parts_)
    for target in range(Y_val.shape[1]):
        known = ~np.isnan(Y_val[:, target])

        def loss(w, target=target, known=known):
            blend = w * logistic[known, target] + (1 - w) * knn[known, target]
            return mean_log_loss(blend[:, None], Y_val[known, target, None])

        assert np.isclose(grid, stack.weights_[target, 0]).any()
        assert loss(stack.weights_[target, 0]) <= min(loss(w) for w in grid) + 1e-12


def test_a_rechosen_head_is_the_head_fitted_with_other_validation_rows(real, fitted):
    """What training cross-fits the holdout with: the knn's k and the stack's weights chosen again on other
    validation rows (here half of them, labels flipped), nothing refitted, the fitted head left as it was."""
    (X, Y), (X_val, Y_val), (X_test, _) = real["fit"], real["val"], real["test"]
    half = np.arange(len(Y_val)) % 2 == 0
    X_other, Y_other = take_rows(X_val, half), 1 - Y_val[half]
    for kind in ("knn", "stack"):
        head = fitted[kind][0]
        kept = head.predict_proba(X_test)
        rechosen = head.rechosen(X_other, Y_other)
        fresh = unfitted_heads()[kind].fit(X, Y, X_other, Y_other)
        assert np.array_equal(rechosen.predict_proba(X_test), fresh.predict_proba(X_test))
        assert not np.array_equal(rechosen.predict_proba(X_test), kept)
        assert np.array_equal(head.predict_proba(X_test), kept)
    stack = fitted["stack"][0]
    rechosen = stack.rechosen(X_other, Y_other)
    assert rechosen.parts_[0] is stack.parts_[0] and rechosen.parts_[1].knn_.k_ != stack.parts_[1].knn_.k_


def test_a_three_part_stack_searches_the_whole_weight_simplex():
    candidates = simplex_candidates(np.linspace(0, 1, 21), 3)
    assert candidates.shape == (231, 3) and (candidates >= 0).all() and np.allclose(candidates.sum(axis=1), 1)
    X, Y, X_val, recalled = twin_rows()
    recalled[:, 1] = np.nan  # no validation label: equal weights
    parts = [LogisticRouter("b", pca_k=4), LogisticRouter("b", pca_k=2), recall_parts()[1]]
    stack = StackRouter(parts).fit(X, Y, X_val, recalled)
    assert np.array_equal(stack.weights_[0], [0.0, 0.0, 1.0]) and np.allclose(stack.weights_[1], 1 / 3)


def test_a_stack_needs_two_parts_and_weights_in_the_unit_interval():
    X, Y, X_val, Y_val = twin_rows()
    with pytest.raises(UserError, match="at least two parts"):
        StackRouter(recall_parts()[:1]).fit(X, Y, X_val, Y_val)
    with pytest.raises(UserError, match=r"values in \[0, 1\]"):
        StackRouter(recall_parts(), grid=(0.0, 1.5)).fit(X, Y, X_val, Y_val)


def miscalibrated(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) of 2 targets: labels drawn from true probabilities, predictions pushed through a
    logit sharpened 3 times (target 0: over-confident) and halved (target 1: under-confident)."""
    truth = rng.uniform(0.05, 0.95, size=(n, 2))
    labels = (rng.random((n, 2)) < truth).astype(float)
    return expit(logit(truth) * [3.0, 0.5]), labels


def test_temperature_scaling_undoes_planted_miscalibration_on_held_out_rows():
    rng = np.random.default_rng(0)
    (fit_proba, fit_labels), (test_proba, test_labels) = miscalibrated(4000, rng), miscalibrated(4000, rng)
    fit_labels[::7, 0] = np.nan
    temperatures = fit_temperatures(fit_proba, fit_labels)
    assert temperatures[0] == pytest.approx(3.0, rel=0.15) and temperatures[1] == pytest.approx(0.5, rel=0.15)
    calibrated = calibrate(test_proba, temperatures)
    for target in range(2):
        before, after = test_proba[:, [target]], calibrated[:, [target]]
        labels = test_labels[:, [target]]
        assert expected_calibration_error(after, labels) < expected_calibration_error(before, labels) / 2
        assert mean_log_loss(after, labels) < mean_log_loss(before, labels) - 0.01
    assert (np.argsort(calibrated, axis=0, kind="stable") == np.argsort(test_proba, axis=0, kind="stable")).all()


def test_temperatures_of_one_change_nothing():
    rng = np.random.default_rng(3)
    proba = rng.random((50, 3))
    proba[0, 0], proba[1, 1] = 0.0, 1.0
    assert np.array_equal(calibrate(proba, np.ones(3)), proba)
    labels = np.column_stack([rng.integers(0, 2, 50), np.ones(50), np.full(50, np.nan)]).astype(float)
    temperatures = fit_temperatures(proba, labels)
    assert temperatures[1] == 1.0 and temperatures[2] == 1.0 and 0.05 <= temperatures[0] <= 20
    assert np.array_equal(calibrate(proba, temperatures)[:, 1:], proba[:, 1:])
    with pytest.raises(ValueError, match="positive temperatures"):
        calibrate(proba, np.array([1.0, 0.0, 1.0]))


def bundle_round_trip(head, folder) -> tuple[dict, dict[str, np.ndarray]]:
    """The head's bundle entry after JSON (description) and a safetensors file (tensors)."""
    description, tensors = head.to_bundle()
    path = folder / f"{head.kind}.safetensors"
    save_file(tensors, str(path))
    return json.loads(json.dumps(description)), load_file(str(path))


def test_every_head_round_trips_bit_identically_through_safetensors(real, fitted, tmp_path):
    X_test, _ = real["test"]
    for kind, (head, _, _) in fitted.items():
        description, tensors = bundle_round_trip(head, tmp_path)
        assert description["kind"] == kind
        for loaded in (type(head).from_bundle(description, tensors), head_from_bundle(description, tensors)):
            assert type(loaded) is type(head) and loaded.required_keys == head.required_keys
            assert np.array_equal(loaded.predict_proba(X_test), head.predict_proba(X_test)), kind
    knn_description, knn_tensors = bundle_round_trip(fitted["knn"][0], tmp_path)
    assert knn_description["k_"] == fitted["knn"][0].knn_.k_ and knn_tensors["embeddings"].dtype == np.float32
    assert {key for key in knn_tensors if not key.startswith("pre/")} == {"embeddings", "labels"}
    stack_description, stack_tensors = bundle_round_trip(fitted["stack"][0], tmp_path)
    assert [part["kind"] for part in stack_description["parts"]] == ["logistic", "knn"]
    assert {key.split("/")[0] for key in stack_tensors} == {"part0", "part1"}
    reloaded = StackRouter.from_bundle(stack_description, stack_tensors)
    assert np.array_equal(reloaded.weights_, fitted["stack"][0].weights_)


def test_a_description_or_tensors_that_do_not_match_raise_user_errors(fitted):
    knn, knn_tensors = fitted["knn"][0].to_bundle()
    logistic, logistic_tensors = fitted["logistic"][0].to_bundle()
    stack, stack_tensors = fitted["stack"][0].to_bundle()
    coef = logistic_tensors["coef"]
    one_pre_key = next(key for key in knn_tensors if key.startswith("pre/"))
    cases = [
        (head_from_bundle, {**knn, "kind": "forest"}, knn_tensors, "unknown router head kind 'forest'"),
        (head_from_bundle, [knn], knn_tensors, "unknown router head kind None"),
        (BlockKnnRouter.from_bundle, {**knn, "depth": 3}, knn_tensors, "depth: Extra inputs are not permitted"),
        (LogisticRouter.from_bundle, knn, knn_tensors, "kind: Input should be 'logistic'"),
        (BlockKnnRouter.from_bundle, {**knn, "block_": ["other", 16]}, knn_tensors, "block_"),
        (BlockKnnRouter.from_bundle, knn, {k: v for k, v in knn_tensors.items() if k != "labels"}, "missing .'labels'"),
        (BlockKnnRouter.from_bundle, knn, {k: v for k, v in knn_tensors.items() if k != one_pre_key}, "lack"),
        (BlockKnnRouter.from_bundle, {**knn, "prior_": knn["prior_"][:3]}, knn_tensors, "3 targets"),
        (LogisticRouter.from_bundle, logistic, {**logistic_tensors, "bias": coef[0]}, "unexpected .'bias'"),
        (LogisticRouter.from_bundle, logistic, {**logistic_tensors, "coef": coef[:, :4]}, "coef"),
        (StackRouter.from_bundle, {**stack, "weights": [[0.5, 0.6]] * 11}, stack_tensors, "summing to 1"),
        (StackRouter.from_bundle, {**stack, "parts": stack["parts"][:1]}, stack_tensors, "parts"),
        (StackRouter.from_bundle, stack, {**stack_tensors, "part2/x": coef[0]}, "part2/x"),
        (StackRouter.from_bundle, {**stack, "parts": [{**stack["parts"][0], "C": -1}, stack["parts"][1]]},
         stack_tensors, "C: Input should be greater than 0"),
    ]
    for load, description, tensors, message in cases:
        with pytest.raises(UserError, match=message):
            load(description, tensors)
