"""Import MMLU-Pro evaluation outputs: a folder of `model_outputs_<MODEL>_<N>shots.zip` archives.

Each archive holds one JSON list of records (`question_id`, `question`, `options`, `answer`, `pred`,
`category`, `src`, and the model's output in `generated_text` or `model_outputs`). One target per
archive. Decisions (see the README's data section):
- correct = (pred == answer), graded against the answer in that model's own archive (the archives come
  from different MMLU-Pro revisions; a few dozen answers differ between them);
- a question with no record in a model's archive was not run: its label is null (unknown). A record
  whose `pred` is null means the model answered but no letter could be extracted: that is wrong (0);
- prompt = the question, then one line per option "A. ...", from the version most archives hold;
- task = "mmlu-pro", category = the record's subject; no source split, so the deterministic split;
- prompt and output tokens are counted with the WordPiece tokenizer of token_count; with a prices
  file, cost = (input price x prompt tokens + output price x output tokens) / 1e6.
"""

from __future__ import annotations

import ast
import json
import re
import string
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ray_router.data.importers import read_prices
from ray_router.data.importers.token_count import TOKENIZER_NAME, count_tokens
from ray_router.data.routing_dataset import RoutingDataset, Target
from ray_router.errors import UserError

ARCHIVE_NAME = re.compile(r"^model_outputs_(?P<model>.+?)_\d+shots\.zip$")
REQUIRED_FIELDS = ("question_id", "question", "options", "answer", "pred")
OUTPUT_FIELDS = ("generated_text", "model_outputs")
TASK = "mmlu-pro"


def archive_files(source: str | Path) -> list[tuple[str, Path]]:
    """(model, archive) pairs of `source`: one archive, or a folder's model_outputs_*.zip, by name."""
    source = Path(source)
    if source.is_file():
        paths = [source]
    elif source.is_dir():
        paths = sorted(p for p in source.glob("model_outputs_*.zip") if p.is_file())
        if not paths:
            raise UserError(f"{source}: no model_outputs_<MODEL>_<N>shots.zip archives in this folder")
    else:
        raise UserError(f"{source}: no such file or folder")
    pairs = []
    for path in paths:
        match = ARCHIVE_NAME.match(path.name)
        if match is None:
            raise UserError(f"{path}: archive name is not model_outputs_<MODEL>_<N>shots.zip")
        pairs.append((match["model"], path))
    return pairs


def read_archive(path: Path) -> tuple[list[dict], int]:
    """The records of one archive, and how many non-record entries (stray strings) were skipped."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.endswith(".json")]
            if len(members) != 1:
                raise UserError(f"{path}: expected one .json file in the archive, found {len(members)}")
            entries = json.loads(archive.read(members[0]))
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise UserError(f"{path}: not a readable zip archive ({err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: the archive's JSON is not readable ({err})") from None
    if not isinstance(entries, list):
        raise UserError(f"{path}: expected a JSON list of records, found {type(entries).__name__}")
    records = [e for e in entries if isinstance(e, dict)]
    for position, record in enumerate(records):
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise UserError(f"{path} record {position + 1}: no field {missing[0]!r}")
    return records, len(entries) - len(records)


def _options(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise UserError(f"{where}: options are not a list literal") from None
    if not isinstance(value, (list, tuple)) or len(value) > len(string.ascii_uppercase):
        raise UserError(f"{where}: options must be a list of at most 26 choices")
    return tuple(str(v) for v in value)


def format_prompt(question: str, options: tuple[str, ...]) -> str:
    """The question, then one line per option: "A. ...", "B. ...", ..."""
    lines = [question.strip()] + [f"{letter}. {option}" for letter, option in zip(string.ascii_uppercase, options)]
    return "\n".join(lines)


def _sort_key(query_id: str) -> tuple[int, int | str]:
    return (0, int(query_id)) if query_id.isdigit() else (1, query_id)


@dataclass
class _Archives:
    """What the archives hold, per question and per model."""

    # per model: question_id -> (correct, output text or None)
    graded: list[dict[str, tuple[float, str | None]]] = field(default_factory=list)
    versions: dict[str, Counter] = field(default_factory=dict)  # id -> Counter of (question, options, category)
    answers: dict[str, set] = field(default_factory=dict)  # id -> the answer letters the archives give
    skipped: int = 0  # non-record entries
    repeated: int = 0  # records repeated within one archive


def _read_archives(pairs: list[tuple[str, Path]]) -> _Archives:
    found = _Archives()
    for _, path in tqdm(pairs, desc="reading archives", unit="archive", disable=None, leave=False):
        records, stray = read_archive(path)
        found.skipped += stray
        graded: dict[str, tuple[float, str | None]] = {}
        for position, record in enumerate(records):
            query = str(record["question_id"])
            correct = float(record["pred"] is not None and record["pred"] == record["answer"])
            if query in graded:
                if graded[query][0] != correct:
                    raise UserError(f"{path} record {position + 1}: question_id {query} again, with another grade")
                found.repeated += 1
                continue
            output = next((record[f] for f in OUTPUT_FIELDS if isinstance(record.get(f), str)), None)
            graded[query] = (correct, output)
            options = record["options"]
            if not isinstance(options, (list, str)):
                raise UserError(f"{path} record {position + 1}: options must be a list")
            version = (str(record["question"]), tuple(options) if isinstance(options, list) else options)
            found.versions.setdefault(query, Counter())[(*version, record.get("category"))] += 1
            found.answers.setdefault(query, set()).add(record["answer"])
        found.graded.append(graded)
    return found


def import_mmlu_pro(source: str | Path, prices: str | Path | None = None) -> RoutingDataset:
    """Import MMLU-Pro archives (a folder of them, or one). With `prices` (a CSV of model,
    input_usd_per_mtok, output_usd_per_mtok) costs are computed; every model must be in it."""
    pairs = archive_files(source)
    models = [m for m, _ in pairs]
    duplicate_models = sorted({m for m in models if models.count(m) > 1})
    if duplicate_models:
        raise UserError(f"{source}: more than one archive for model {duplicate_models[0]!r}")
    targets = read_prices(prices, models) if prices is not None else [Target(name=m) for m in models]
    found = _read_archives(pairs)
    versions, per_model = found.versions, found.graded

    query_ids = sorted(versions, key=_sort_key)
    n, k = len(query_ids), len(models)
    chosen = [versions[q].most_common(1)[0][0] for q in query_ids]
    prompts = [
        format_prompt(question, _options(options, f"{source}: question_id {q}"))
        for q, (question, options, _) in zip(query_ids, chosen)
    ]
    correct = np.full((n, k), np.nan)
    output_tokens = np.full((n, k), np.nan)
    for j, graded in enumerate(per_model):
        rows = [i for i, q in enumerate(query_ids) if q in graded]
        correct[rows, j] = [graded[query_ids[i]][0] for i in rows]
        with_text = [i for i in rows if graded[query_ids[i]][1] is not None]
        texts = [graded[query_ids[i]][1] for i in with_text]
        output_tokens[with_text, j] = count_tokens(texts, description=f"tokens {models[j]}")
    prompt_tokens = count_tokens(prompts, description="prompt tokens").astype(np.float64)
    cost = None
    if prices is not None:
        price_in = np.array([t.input_usd_per_mtok for t in targets])
        price_out = np.array([t.output_usd_per_mtok for t in targets])
        cost = (price_in * prompt_tokens[:, None] + price_out * output_tokens) / 1e6

    unknown = int(np.isnan(correct).sum())
    notes = [f"read {len(pairs)} archives: {n} questions x {k} models"]
    notes.append(f"{unknown} (question, model) pairs have no record: their labels are null")
    if found.repeated:
        notes.append(f"merged {found.repeated} repeated records (same question_id and grade in one archive)")
    if found.skipped:
        notes.append(f"skipped {found.skipped} stray non-record entries")
    revised = sum(len(v) > 1 for v in versions.values())
    regraded = sum(len(a) > 1 for a in found.answers.values())
    if revised or regraded:
        notes.append(
            f"{revised} questions differ in text/options and {regraded} in answer between archives "
            "(MMLU-Pro revisions): prompts use the most common version, each model is graded by its own archive"
        )
    if prices is None:
        notes.append("no prices file: costs are null")
    source_info = {
        "format": "mmlu-pro",
        "path": str(source),
        "files": [p.name for _, p in pairs],
        "prices": None if prices is None else str(prices),
        "rows_read": sum(len(g) for g in per_model) + found.repeated,
        "duplicates_merged": found.repeated,
        "correct": "pred == answer; no record = null; record with null pred = 0",
        "cost": "(input price x prompt tokens + output price x output tokens) / 1e6",
        "tokens": f"prompt and output tokens counted with {TOKENIZER_NAME}",
        "notes": notes,
    }
    return RoutingDataset.from_arrays(
        query_ids,
        prompts,
        targets,
        correct,
        cost_usd=cost,
        output_tokens=output_tokens,
        task=[TASK] * n,
        category=[c for _, _, c in chosen],
        split=None,
        source=source_info,
    )
