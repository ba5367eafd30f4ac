"""A layer scan's output folder: scan.csv (the probe statistics), selection.json (the per-target
selection with the scan's settings) and scan.png (the plot of `scan_report`)."""

import io
import os
from typing import Literal

import pandas as pd
import pydantic

from ray_router.data import storage
from ray_router.errors import UserError
from ray_router.model.layer_scan import COLUMNS, ScanConfig, ScanResult
from ray_router.model.scan_report import scan_plot_png

SCAN_CSV = "scan.csv"
SELECTION_JSON = "selection.json"
SCAN_PNG = "scan.png"
SELECTION_FORMAT_VERSION = 1


class _TargetSelection(pydantic.BaseModel):
    layer: int
    pooling: str
    k: int
    fallback: bool = pydantic.Field(description="the target had not enough signal: overall best (layer, pooling)")


class _SelectionFile(pydantic.BaseModel):
    format_version: Literal[1]
    criterion: Literal["j", "auc"]
    config: ScanConfig
    targets: dict[str, _TargetSelection]


def write_scan(result: ScanResult, out_dir: str | os.PathLike) -> None:
    """Write scan.csv, selection.json and scan.png into out_dir, a local folder or a cloud URI (each
    file replaced atomically)."""
    out = os.fspath(out_dir)
    no_signal = set(result.no_signal_targets)
    selection_file = _SelectionFile(
        format_version=SELECTION_FORMAT_VERSION,
        criterion=result.config.select,
        config=result.config,
        targets={
            row.target: _TargetSelection(
                layer=int(row.layer),
                pooling=str(row.pooling),
                k=int(row.k),
                fallback=row.target in no_signal,
            )
            for row in result.selected_rows().itertuples()
        },
    )
    storage.write_bytes_atomic(storage.join(out, SCAN_CSV), result.rows.to_csv(index=False).encode())
    storage.write_bytes_atomic(storage.join(out, SELECTION_JSON), selection_file.model_dump_json(indent=2).encode())
    storage.write_bytes_atomic(storage.join(out, SCAN_PNG), scan_plot_png(result))


def read_scan(out_dir: str | os.PathLike) -> ScanResult:
    """Load a scan written by `write_scan` (fails with a UserError naming the file when it is unusable)."""
    out = os.fspath(out_dir)
    csv_path, json_path = storage.join(out, SCAN_CSV), storage.join(out, SELECTION_JSON)
    for path in (csv_path, json_path):
        if not storage.is_file(path):
            raise UserError(f"{path} not found: is {out} the output folder of scan-layers?")
    try:
        selection_file = _SelectionFile.model_validate_json(storage.read_bytes(json_path))
    except pydantic.ValidationError as err:
        raise UserError(f"{json_path} is not a valid layer-scan selection: {err}") from err
    rows = pd.read_csv(io.BytesIO(storage.read_bytes(csv_path)), keep_default_na=False,
                       na_values={c: [""] for c in ("J", "probe_auc")})
    missing = [c for c in COLUMNS if c not in rows.columns]
    if missing:
        raise UserError(f"{csv_path} lacks the columns {missing}")
    selection = {t: (s.layer, s.pooling) for t, s in selection_file.targets.items()}
    return ScanResult(rows=rows[COLUMNS], selection=selection, config=selection_file.config)
