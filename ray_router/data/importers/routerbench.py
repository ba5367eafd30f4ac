"""Import RouterBench's wide layout: one row per query, one correctness column per model.

Columns used: `sample_id` (query id), `prompt` (a Python list literal of one string, parsed with
ast.literal_eval), `eval_name` (task), `<model>` (correctness in [0, 1], NaN = unknown),
`<model>|total_cost` (USD for that query) and, when present, `<model>|model_response` (its output
tokens are counted, see token_count). The models are the columns that have a `|total_cost` partner.
The split comes from the file name (`..._train.csv` / `..._test.csv`); files without one get the
deterministic split. Rows that share a sample_id are merged into one query (see merge_duplicate_ids).
"""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ray_router.data.importers import (
    QueryRows,
    merge_duplicate_ids,
    numeric_column,
    require_columns,
    rows_to_dataset,
)
from ray_router.data.importers.token_count import TOKENIZER_NAME, count_tokens
from ray_router.data.routing_dataset import RoutingDataset, Target
from ray_router.errors import UserError

SUFFIXES = (".csv", ".pkl", ".pickle")
COST_SUFFIX = "|total_cost"
RESPONSE_SUFFIX = "|model_response"
_SPLIT_IN_NAME = re.compile(r"(?:^|[_.-])(train|test)(?:$|[_.-])")


def source_files(source: str | Path) -> list[Path]:
    """The RouterBench files of `source`: the file itself, or a folder's *.csv / *.pkl / *.pickle, sorted."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise UserError(f"{source}: no such file or folder")
    files = sorted(p for p in source.iterdir() if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"{source}: no RouterBench files ({', '.join(SUFFIXES)}) in this folder")
    return files


def _read_frame(path: Path) -> pd.DataFrame:
    """One RouterBench file as a DataFrame. Pickles run code when loaded: only open trusted ones."""
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        frame = pd.read_pickle(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV ({err})") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as err:
        raise UserError(f"{path}: not a readable pickle ({err})") from None
    if not isinstance(frame, pd.DataFrame):
        raise UserError(f"{path}: the pickle holds a {type(frame).__name__}, not a pandas DataFrame")
    return frame


def parse_literal_text(value: object) -> str | None:
    """The text of a RouterBench prompt/response cell: a list literal of strings gives its text
    (repeated identical copies once, different strings joined by newlines); other text is kept as is."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    parsed = value
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
    if isinstance(parsed, (list, tuple)) and parsed and all(isinstance(p, str) for p in parsed):
        return "\n".join(dict.fromkeys(parsed))
    return str(value)


def split_from_name(path: Path) -> str | None:
    """"train"/"test" when the file name says so (e.g. arc_challenge_train.csv), else None."""
    found = _SPLIT_IN_NAME.findall(path.stem.lower())
    return found[-1] if found else None


def _model_columns(frame: pd.DataFrame, path: Path) -> list[str]:
    models = [c[: -len(COST_SUFFIX)] for c in frame.columns if isinstance(c, str) and c.endswith(COST_SUFFIX)]
    if not models:
        raise UserError(f"{path}: no '<model>{COST_SUFFIX}' columns: not the RouterBench layout")
    require_columns(frame, ["sample_id", "prompt", "eval_name", *models], str(path))
    return [c for c in frame.columns if c in set(models)]


def _rows_of(frame: pd.DataFrame, path: Path, models: list[str]) -> tuple[QueryRows, list[list[str | None]]]:
    """Rows of one file, and per model the response texts (None where absent)."""
    n = len(frame)
    where = str(path)
    if frame["sample_id"].isna().any():
        raise UserError(f"{where} row {int(np.flatnonzero(frame['sample_id'].isna())[0]) + 1}: empty sample_id")
    ids = frame["sample_id"].astype(str).str.strip().tolist()
    prompts = [parse_literal_text(v) for v in frame["prompt"]]
    if None in prompts:
        raise UserError(f"{where} row {prompts.index(None) + 1}, column 'prompt': empty prompt")
    correct = np.column_stack([numeric_column(frame[m], where, m, labels=True) for m in models])
    cost = np.column_stack([numeric_column(frame[m + COST_SUFFIX], where, m + COST_SUFFIX) for m in models])
    responses = [
        [parse_literal_text(v) for v in frame[m + RESPONSE_SUFFIX]] if m + RESPONSE_SUFFIX in frame else [None] * n
        for m in models
    ]
    task = [None if pd.isna(v) else str(v) for v in frame["eval_name"]]
    rows = QueryRows(
        query_ids=ids,
        prompts=prompts,
        origins=[f"{path.name} row {i + 1}" for i in range(n)],
        correct=correct,
        cost_usd=cost,
        output_tokens=np.full((n, len(models)), np.nan),
        task=task,
        category=[None] * n,
        split=[split_from_name(path)] * n,
    )
    return rows, responses


def _concat(parts: list[QueryRows]) -> QueryRows:
    fields = {}
    for name in QueryRows.__dataclass_fields__:
        values = [getattr(p, name) for p in parts]
        fields[name] = np.concatenate(values) if isinstance(values[0], np.ndarray) else sum(values, [])
    return QueryRows(**fields)


def import_routerbench(source: str | Path) -> RoutingDataset:
    """Import RouterBench CSVs (or the upstream pickle, same columns): a folder of them or one file.

    Rows sharing a sample_id are merged (conflicting labels are a UserError); how many is recorded in
    `dataset.source["duplicates_merged"]`."""
    files = source_files(source)
    parts, responses, models = [], None, None
    for path in files:
        frame = _read_frame(path)
        file_models = _model_columns(frame, path)
        if models is None:
            models = file_models
        elif set(file_models) != set(models):
            raise UserError(f"{path}: its models differ from those of {files[0].name}")
        rows, file_responses = _rows_of(frame, path, models)
        parts.append(rows)
        responses = file_responses if responses is None else [a + b for a, b in zip(responses, file_responses)]
    rows = _concat(parts)
    for j, texts in enumerate(responses):
        known = [i for i, t in enumerate(texts) if t is not None]
        if known:
            rows.output_tokens[known, j] = count_tokens([texts[i] for i in known], description=models[j])
    merged, n_merged = merge_duplicate_ids(rows, models)
    notes = [f"read {len(rows.query_ids)} rows from {len(files)} file(s)"]
    if n_merged:
        notes.append(
            f"merged {n_merged} duplicate sample_id row(s) into the row with more labels "
            f"-> {len(merged.query_ids)} unique queries"
        )
    if any(s is None for s in merged.split):
        notes.append("queries without a split in the file name got the deterministic hash split")
    source_info = {
        "format": "routerbench",
        "path": str(source),
        "files": [p.name for p in files],
        "rows_read": len(rows.query_ids),
        "duplicates_merged": n_merged,
        "cost": "true per-query cost from <model>|total_cost",
        "output_tokens": f"counted from <model>|model_response with {TOKENIZER_NAME}",
        "notes": notes,
    }
    return rows_to_dataset(merged, [Target(name=m) for m in models], source_info)
