"""SharedTrunkNet, its masked losses, and the per-target input blocks (synthetic data)."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from torch import nn

from ray_router.errors import UserError
from ray_router.model.preprocessing import BlockPreprocessor
from ray_router.model.trunk_net import SharedTrunkNet, masked_bce_loss, masked_pairwise_loss


def test_default_network_is_the_method_recipe():
    net = SharedTrunkNet(d_in=40, n_targets=7)
    layers = list(net.trunk) + [net.head]
    kinds = [type(layer) for layer in layers]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (40, 256)
    assert (layers[3].in_features, layers[3].out_features) == (256, 128)
    assert (layers[6].in_features, layers[6].out_features) == (128, 7)
    assert (layers[2].p, layers[5].p) == (0.3, 0.2)
    assert net(torch.zeros(5, 40)).shape == (5, 7)


def test_masked_loss_is_bce_over_known_entries_only():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    labels = torch.tensor(
        [[1, 0, np.nan], [np.nan, 1, 1], [0, np.nan, np.nan], [1, 1, 0], [np.nan, np.nan, np.nan], [0, 0, 1]],
        dtype=torch.float32,
    )
    known = ~torch.isnan(labels)
    expected = nn.functional.binary_cross_entropy_with_logits(logits[known], labels[known])
    assert torch.allclose(masked_bce_loss(logits, labels), expected, rtol=1e-6)


def test_missing_labels_give_no_gradient_to_their_target():
    """A row whose label for target t is missing changes nothing for t: zero logit gradient, and
    t's head weights get the same gradient whatever that row's features are."""
    torch.manual_seed(0)
    net = SharedTrunkNet(d_in=8, n_targets=3).eval()
    x = torch.randn(10, 8)
    labels = torch.randint(0, 2, (10, 3)).float()
    labels[4, 1] = labels[7, 1] = float("nan")

    def head_grads(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net.zero_grad()
        logits = net(features)
        logits.retain_grad()
        masked_bce_loss(logits, labels).backward()
        return logits.grad.clone(), net.head.weight.grad[1].clone(), net.head.bias.grad[1].clone()

    logit_grad, weight_grad, bias_grad = head_grads(x)
    assert logit_grad[4, 1] == 0 and logit_grad[7, 1] == 0
    assert (logit_grad[[4, 7]][:, [0, 2]] != 0).all()  # the rows still train the other targets
    n_known = int((~torch.isnan(labels)).sum())
    expected = (torch.sigmoid(net(x)) - torch.nan_to_num(labels)) / n_known
    assert torch.allclose(logit_grad[0], expected[0].detach(), atol=1e-7)

    perturbed = x.clone()
    perturbed[4] += 10 * torch.randn(8)  # row 4's label for target 1 is missing
    _, weight_grad_2, bias_grad_2 = head_grads(perturbed)
    assert torch.equal(weight_grad, weight_grad_2) and torch.equal(bias_grad, bias_grad_2)


def test_masked_loss_without_any_known_label_is_zero():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = masked_bce_loss(logits, torch.full((3, 2), float("nan")))
    loss.backward()
    assert loss.item() == 0 and torch.equal(logits.grad, torch.zeros(3, 2))


def test_pairwise_loss_ranks_each_querys_right_targets_above_its_wrong_ones():
    """RankNet over the pairs (right, wrong) of one query, by hand; rows without such a pair, missing labels and
    a shift of one query's logits (the same for every target) change nothing."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.1, -0.2], [1.0, 4.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[1, 0, np.nan], [1, 1, 1], [0, 1, 0]], dtype=torch.float32)
    pairs = [(0, 0, 1), (2, 1, 0), (2, 1, 2)]  # (row, right target, wrong target)
    expected = sum(nn.functional.softplus(logits[r, w] - logits[r, a]) for r, a, w in pairs) / len(pairs)
    loss = masked_pairwise_loss(logits, labels)
    assert torch.allclose(loss, expected, rtol=1e-6)
    shifted = logits.detach() + torch.tensor([[5.0], [-3.0], [1.0]])
    assert torch.allclose(masked_pairwise_loss(shifted, labels), expected, rtol=1e-6)
    loss.backward()
    assert torch.equal(logits.grad[1], torch.zeros(3)) and logits.grad[0, 2] == 0
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]  # the right target's logit pushed up, the wrong one's down
    no_pair = torch.zeros(2, 3, requires_grad=True)
    loss = masked_pairwise_loss(no_pair, torch.tensor([[1, 1, np.nan], [0, np.nan, 0]], dtype=torch.float32))
    loss.backward()
    assert loss.item() == 0 and torch.equal(no_pair.grad, torch.zeros(2, 3))


@pytest.fixture
def features() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "L3_last": rng.normal(size=(120, 12)).astype(np.float32),
        "L6_mean": (rng.normal(size=(120, 9)) * 4 + 2).astype(np.float32),
    }


def _rows(features: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {name: matrix[rows] for name, matrix in features.items()}


def test_blocks_match_scaler_then_pca_and_are_concatenated_in_target_order(features):
    prep = BlockPreprocessor([("L6_mean", 4), ("L3_last", 5), ("L6_mean", 2)]).fit(features)
    out = prep.transform(features)
    assert out.shape == (120, 11) and out.dtype == np.float32 and prep.output_dim == 11
    expected_blocks = (("L6_mean", 4, slice(0, 4)), ("L3_last", 5, slice(4, 9)), ("L6_mean", 2, slice(9, 11)))
    for column, k, cols in expected_blocks:
        standardised = StandardScaler().fit_transform(features[column])
        reference = PCA(k, random_state=0).fit_transform(standardised)
        np.testing.assert_allclose(out[:, cols], reference, atol=1e-4)


def test_blocks_are_fitted_on_the_given_training_rows_only(features):
    features["L3_last"][100:] += 50.0  # "test" rows far away: fitting on them would show
    train = _rows(features, slice(0, 100))
    prep = BlockPreprocessor([("L3_last", 3)]).fit(train)
    tensors = prep.to_tensors()
    train_mean = train["L3_last"].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(tensors["L3_last.k3.scaler_mean"], train_mean)
    np.testing.assert_allclose(prep.transform(train).mean(axis=0), 0, atol=1e-5)
    assert (np.abs(prep.transform(_rows(features, slice(100, 120))).mean(axis=0)) > 1).any()


def test_targets_sharing_a_block_share_one_fit(features):
    prep = BlockPreprocessor([("L3_last", 4), ("L6_mean", 3), ("L3_last", 4)]).fit(features)
    assert prep.unique_blocks == [("L3_last", 4), ("L6_mean", 3)]
    assert sorted({key.rsplit(".", 1)[0] for key in prep.to_tensors()}) == ["L3_last.k4", "L6_mean.k3"]
    out = prep.transform(features)
    assert np.array_equal(out[:, 0:4], out[:, 7:11])


def test_round_trip_through_safetensors_is_bit_identical(features, tmp_path):
    blocks = [("L3_last", 5), ("L6_mean", 4), ("L3_last", 5)]
    prep = BlockPreprocessor(blocks).fit(_rows(features, slice(0, 90)))
    save_file(prep.to_tensors(), str(tmp_path / "prep.safetensors"))
    loaded = BlockPreprocessor.from_tensors(blocks, load_file(str(tmp_path / "prep.safetensors")))
    held_out = _rows(features, slice(90, 120))
    assert np.array_equal(prep.transform(held_out), loaded.transform(held_out))


def test_user_mistakes_are_named(features):
    with pytest.raises(UserError, match="L9_last"):
        BlockPreprocessor([("L9_last", 2)]).fit(features)
    with pytest.raises(UserError, match="k=20"):
        BlockPreprocessor([("L6_mean", 20)]).fit(features)
    prep = BlockPreprocessor([("L6_mean", 3)]).fit(features)
    with pytest.raises(UserError, match="9"):
        prep.transform({"L6_mean": features["L3_last"]})
    tensors = prep.to_tensors()
    tensors["L6_mean.k3.pca_components"] = tensors["L6_mean.k3.pca_components"][:2]
    with pytest.raises(UserError, match="inconsistent shapes"):
        BlockPreprocessor.from_tensors([("L6_mean", 3)], tensors)
    del tensors["L6_mean.k3.pca_mean"]
    with pytest.raises(UserError, match="pca_mean"):
        BlockPreprocessor.from_tensors([("L6_mean", 3)], tensors)


def test_a_block_of_several_features_reduces_them_side_by_side(features):
    prep = BlockPreprocessor([("L3_last+L6_mean", 6)]).fit(features)
    side_by_side = np.concatenate([features["L3_last"], features["L6_mean"]], axis=1)
    reference = PCA(6, random_state=0).fit_transform(StandardScaler().fit_transform(side_by_side))
    np.testing.assert_allclose(prep.transform(features), reference, atol=1e-4)
    with pytest.raises(UserError, match="'L6_mean' is missing"):
        prep.transform({"L3_last": features["L3_last"], "L9_mean": features["L6_mean"]})
