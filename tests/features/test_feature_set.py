"""Feature folders of several encoders read as one, by key `<encoder name>/<column>`."""

import numpy as np
import pytest

from ray_router.data.routing_dataset import RoutingDataset
from ray_router.errors import UserError
from ray_router.features.feature_set import FeatureSet
from ray_router.features.store import FeatureStore

pytestmark = pytest.mark.ray


def test_keys_name_the_encoder_and_load_matches_each_folder(small_routerbench, small_features, small_gemma_features):
    features = FeatureSet.open([str(small_features), str(small_gemma_features)])
    assert [s.name for s in features.schemas] == ["smollm2-135m", "gemma3-270m"]
    assert "smollm2-135m/L1_last" in features.keys and "gemma3-270m/L2_mean" in features.keys
    ids = RoutingDataset.read(small_routerbench).query_ids[::37]
    both = features.load(ids, ["gemma3-270m/L2_mean", "smollm2-135m/L1_last"])
    assert list(both) == ["gemma3-270m/L2_mean", "smollm2-135m/L1_last"]  # in the order asked for
    np.testing.assert_array_equal(both["smollm2-135m/L1_last"],
                                  FeatureStore.open(str(small_features)).load(ids, ["L1_last"])["L1_last"])
    assert both["gemma3-270m/L2_mean"].shape == (len(ids), 640)


def test_an_encoder_given_twice_or_an_unknown_key_is_refused(small_features):
    with pytest.raises(UserError, match="smollm2-135m"):
        FeatureSet.open([str(small_features), str(small_features)])
    with pytest.raises(UserError, match="L9_last"):
        FeatureSet.open(str(small_features)).load(["x"], ["smollm2-135m/L9_last"])
