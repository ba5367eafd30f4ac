"""The routing-data model (validation, splits, selection, Parquet round trip) and the summary metrics."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_router.data.routing_dataset import (
    FORMAT_VERSION,
    METADATA_KEY,
    RoutingDataset,
    Target,
    correct_column,
    cost_column,
    deterministic_split,
    output_tokens_column,
)
from ray_router.data.summary import agreement_summary as agreement_zones
from ray_router.data.summary import best_single_with_accuracy as best_single
from ray_router.data.summary import summarize
from ray_router.errors import UserError
from ray_router.evaluation.metrics import (
    agreement_zone_of_rows,
    complete_rows,
    oracle_accuracy,
    target_accuracy,
)

NAN = np.nan
TARGETS = [Target(name="big", input_usd_per_mtok=3.0, output_usd_per_mtok=15.0), Target(name="small")]
LABELS = np.array([[1, 0], [1, 1], [0, 0], [NAN, 1], [0, 1]], dtype=float)


def small_dataset(**overrides) -> RoutingDataset:
    arguments = dict(
        query_ids=["q1", "q2", "q3", "q4", "q5"],
        prompts=["one", "two", "three", "four", "five"],
        targets=TARGETS,
        correct=LABELS,
        cost_usd=np.array([[0.5, 0.1], [0.5, NAN], [0.4, 0.1], [0.3, 0.1], [0.2, 0.1]]),
        output_tokens=np.array([[10, 2], [12, 3], [NAN, 4], [9, 5], [8, 6]], dtype=float),
        task=["a", "a", "b", None, "b"],
        split=["train", "train", "test", "train", None],
        source={"format": "test", "notes": ["made by hand"]},
    )
    arguments.update(overrides)
    return RoutingDataset.from_arrays(**arguments)


def test_columns_types_and_missing_values_stay_null():
    dataset = small_dataset()
    schema = dataset.table.schema
    assert schema.names[:5] == ["query_id", "prompt", "task", "category", "split"]
    assert schema.field(correct_column("big")).type == pa.float64()
    assert schema.field(cost_column("small")).type == pa.float64()
    assert schema.field(output_tokens_column("big")).type == pa.int64()
    assert dataset.table.column(correct_column("big")).null_count == 1
    np.testing.assert_array_equal(dataset.labels(), LABELS)
    assert np.isnan(dataset.costs()[1, 1]) and np.isnan(dataset.output_tokens()[2, 0])
    assert dataset.target_names == ["big", "small"] and len(dataset) == 5
    assert list(dataset.splits[:4]) == ["train", "train", "test", "train"]
    assert dataset.splits[4] == deterministic_split(["q5"])[0]  # no split given -> hash split


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"query_ids": ["q1", "q2", "q1", "q4", "q5"]}, "duplicate query_id 'q1'"),
        ({"query_ids": ["q1", "", "q3", "q4", "q5"]}, "empty query_id at row 2"),
        ({"correct": np.where(LABELS == 0, -0.5, LABELS)}, "outside [0, 1]"),
        ({"correct": np.where(np.isnan(LABELS), 1.5, LABELS)}, "query 'q4', target 'big': label 1.5"),
        ({"split": ["train", "val", "test", "train", "test"]}, "split values must be 'train' or 'test'"),
        ({"cost_usd": -np.ones((5, 2))}, "negative cost"),
        ({"output_tokens": np.full((5, 2), 2.5)}, "is not a count"),
    ],
)
def test_from_arrays_rejects_bad_input(overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        small_dataset(**overrides)


def test_deterministic_split_is_stable_and_near_the_fraction():
    ids = [f"query-{i}" for i in range(20000)]
    first, second = deterministic_split(ids), deterministic_split(list(reversed(ids)))[::-1]
    np.testing.assert_array_equal(first, second)
    assert abs((first == "test").mean() - 0.15) < 0.01
    assert abs((deterministic_split(ids, test_fraction=0.3) == "test").mean() - 0.3) < 0.015
    # A larger fraction only moves queries from train to test.
    assert set(np.flatnonzero(first == "test")) <= set(np.flatnonzero(deterministic_split(ids, 0.3) == "test"))


def test_select_by_split_ids_and_rows():
    dataset = small_dataset()
    train = dataset.select(split="train")
    assert list(train.query_ids) == [q for q, s in zip(dataset.query_ids, dataset.splits) if s == "train"]
    picked = dataset.select(query_ids=["q4", "q1"])
    assert list(picked.query_ids) == ["q4", "q1"]
    np.testing.assert_array_equal(picked.labels(), LABELS[[3, 0]])
    assert list(dataset.select(rows=np.array([False, True, True, False, False])).query_ids) == ["q2", "q3"]
    assert list(dataset.select(rows=[0, 3], split="train").query_ids) == ["q1", "q4"]
    assert picked.targets == dataset.targets and picked.source == dataset.source
    with pytest.raises(UserError, match="not in the dataset"):
        dataset.select(query_ids=["nope"])


def test_parquet_round_trip_keeps_values_nulls_and_metadata(tmp_path):
    dataset = small_dataset()
    path = tmp_path / "nested" / "data.parquet"
    dataset.write(path)
    assert [p.name for p in path.parent.iterdir()] == ["data.parquet"]  # no temporary file left
    metadata = json.loads(pq.read_schema(path).metadata[METADATA_KEY])
    assert metadata["format_version"] == FORMAT_VERSION
    assert metadata["targets"][0] == {"name": "big", "input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0}
    assert metadata["source"]["notes"] == ["made by hand"]

    loaded = RoutingDataset.read(path)
    assert loaded.table.equals(dataset.table)
    assert loaded.targets == TARGETS and loaded.source == dataset.source
    np.testing.assert_array_equal(loaded.labels(), LABELS)
    np.testing.assert_array_equal(loaded.output_tokens(), dataset.output_tokens())
    assert list(loaded.column("task")) == ["a", "a", "b", None, "b"]
    assert loaded.content_hash() == dataset.content_hash()


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="missing.parquet: no such file"):
        RoutingDataset.read(tmp_path / "missing.parquet")
    text = tmp_path / "text.parquet"
    text.write_text("not parquet")
    with pytest.raises(UserError, match="text.parquet: not a readable Parquet file"):
        RoutingDataset.read(text)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), plain)
    with pytest.raises(UserError, match="plain.parquet: not a ray-router routing dataset"):
        RoutingDataset.read(plain)
    newer = tmp_path / "newer.parquet"
    table = small_dataset().table
    metadata = json.loads(table.schema.metadata[METADATA_KEY]) | {"format_version": FORMAT_VERSION + 1}
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata)}), newer)
    with pytest.raises(UserError, match="newer.parquet: routing-data format 2 is newer"):
        RoutingDataset.read(newer)


def test_content_hash_depends_on_queries_not_row_order():
    dataset = small_dataset()
    assert dataset.select(rows=[4, 3, 2, 1, 0]).content_hash() == dataset.content_hash()
    assert small_dataset(prompts=["one", "two", "three", "four", "5"]).content_hash() != dataset.content_hash()
    assert small_dataset(correct=np.zeros((5, 2))).content_hash() == dataset.content_hash()


def test_summary_metrics_on_known_arrays():
    np.testing.assert_allclose(target_accuracy(LABELS), [2 / 4, 3 / 5])
    assert best_single(LABELS) == (1, pytest.approx(0.6))
    assert oracle_accuracy(LABELS) == pytest.approx(4 / 5)  # q3 is wrong for both
    assert oracle_accuracy(np.array([[NAN, NAN], [0, 1]])) == 1.0  # rows without labels are left out
    assert list(complete_rows(LABELS)) == [True, True, True, False, True]
    assert list(agreement_zone_of_rows(LABELS)) == ["disagree", "all_right", "all_wrong", "incomplete", "disagree"]
    zones = agreement_zones(LABELS)
    assert (zones.rows, zones.excluded) == (4, 1)
    assert (zones.all_right, zones.all_wrong, zones.disagree) == (0.25, 0.25, 0.5)
    assert best_single(np.full((2, 2), NAN))[0] == -1


def test_summarize_per_split():
    summary = summarize(small_dataset(split=["train", "train", "test", "train", "test"]))
    assert (summary.rows, summary.splits["train"].rows, summary.splits["test"].rows) == (5, 3, 2)
    train = summary.splits["train"]
    assert [t.accuracy for t in train.targets] == [1.0, 2 / 3]
    assert train.best_single == "big" and train.oracle_accuracy == 1.0
    assert train.agreement.excluded == 1
    assert summary.splits["all"].targets[0].mean_cost_usd == pytest.approx(np.mean([0.5, 0.5, 0.4, 0.3, 0.2]))
    assert summary.splits["all"].targets[1].median_output_tokens == 4.0
