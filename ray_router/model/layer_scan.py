"""Scan every (layer, pooling) of an encoder's features with the layer probes, and pick one per target.

For each (layer, pooling) the training features are reduced once (StandardScaler + PCA k, shared by
all targets), d_eff is computed once, and Fisher J and the probe's CV ROC-AUC per target on the rows
whose label is known. The selection is per target the (layer, pooling) with the highest J (or AUC).
"""

import io
import os
from dataclasses import dataclass
from typing import Literal

import matplotlib
import numpy as np
import pandas as pd
import pydantic
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ray_router.data import storage
from ray_router.errors import UserError
from ray_router.model.probes import effective_dimensionality, fisher_separability, probe_auc, reduce_features
from ray_router.resources import ensure_ray

OK = "ok"
NO_SIGNAL = "not enough signal"
COLUMNS = ["target", "layer", "pooling", "k", "n", "positives", "J", "d_eff", "probe_auc", "status"]
CRITERION_COLUMN = {"j": "J", "auc": "probe_auc"}
SCAN_CSV = "scan.csv"
SELECTION_JSON = "selection.json"
SCAN_PNG = "scan.png"
SELECTION_FORMAT_VERSION = 1


class ScanConfig(pydantic.BaseModel):
    """Settings of a layer scan."""

    model_config = pydantic.ConfigDict(extra="forbid")

    k: int = pydantic.Field(64, ge=1, description="PCA dimension (capped at n_train - 1 and the feature width)")
    select: Literal["j", "auc"] = pydantic.Field("j", description="selection criterion: Fisher J or probe AUC")
    min_minority: int = pydantic.Field(
        20, ge=2, description="a target whose rarer class has fewer training rows gets 'not enough signal'"
    )
    folds: int = pydantic.Field(5, ge=2, description="stratified CV folds of the logistic probe")
    seed: int = pydantic.Field(0, description="seed of the CV split")
    shrinkage: float = pydantic.Field(1e-3, ge=0.0, description="Fisher J ridge: eps = shrinkage * trace(S_W) / k")
    # One whole CPU per task: a task is single-threaded CPU work, and on 2 cores 0.5 CPU per task (4 tasks
    # at once) made the scan 2-3x slower. Short tasks cannot deadlock the way long-lived actors can;
    # lower it only when other actors hold the cluster's CPUs.
    ray_task_cpus: float = pydantic.Field(1.0, gt=0.0, description="CPUs per Ray task (one per (layer, pooling))")

    @pydantic.model_validator(mode="after")
    def _enough_rows_per_fold(self) -> "ScanConfig":
        if self.min_minority < self.folds:
            raise ValueError(f"min_minority ({self.min_minority}) must be >= folds ({self.folds})")
        return self


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


def _scan_one_layer(features: np.ndarray, labels: np.ndarray, config: ScanConfig) -> list[dict]:
    """Probe statistics of one (layer, pooling) for every target (label column), in column order.

    BLAS runs single-threaded: the matrices are small, and threads fighting over busy cores made a
    scan 5x slower; parallelism comes from running (layer, pooling) pairs as Ray tasks instead.
    """
    with threadpool_limits(limits=1):
        return _probe_all_targets(features, labels, config)


def _probe_all_targets(features: np.ndarray, labels: np.ndarray, config: ScanConfig) -> list[dict]:
    reduced = reduce_features(features, config.k)
    d_eff = effective_dimensionality(reduced)
    rows = []
    for column in labels.T:
        known = ~np.isnan(column)
        y = column[known]
        n, positives = int(known.sum()), int(y.sum())
        row = {"k": reduced.shape[1], "n": n, "positives": positives, "d_eff": d_eff}
        if min(positives, n - positives) < config.min_minority:
            row.update(J=np.nan, probe_auc=np.nan, status=NO_SIGNAL)
        else:
            row.update(
                J=fisher_separability(reduced[known], y, config.shrinkage),
                probe_auc=probe_auc(reduced[known], y, config.folds, config.seed),
                status=OK,
            )
        rows.append(row)
    return rows


def _check_inputs(
    features: dict[tuple[int, str], np.ndarray], labels: np.ndarray, target_names: list[str]
) -> None:
    if not features:
        raise UserError("the layer scan got no features: the feature directory holds no (layer, pooling)")
    if labels.ndim != 2 or labels.shape[1] != len(target_names):
        raise UserError(f"labels have shape {labels.shape} but there are {len(target_names)} target names")
    if len(set(target_names)) != len(target_names):
        raise UserError(f"target names are not unique: {target_names}")
    known = labels[~np.isnan(labels)]
    if not np.isin(known, (0.0, 1.0)).all():
        bad = sorted(set(known[~np.isin(known, (0.0, 1.0))].tolist()))[:5]
        raise UserError(f"labels must be 0, 1 or missing (NaN); found {bad}")
    for (layer, pooling), matrix in features.items():
        if matrix.ndim != 2 or matrix.shape[0] != labels.shape[0]:
            raise UserError(
                f"features of layer {layer} pooling {pooling!r} have shape {matrix.shape}, "
                f"expected ({labels.shape[0]}, d) to match the labels"
            )
        if not np.isfinite(matrix).all():
            raise UserError(f"features of layer {layer} pooling {pooling!r} contain NaN or infinite values")


def _run_local(
    features: dict[tuple[int, str], np.ndarray], labels: np.ndarray, config: ScanConfig
) -> dict[tuple[int, str], list[dict]]:
    results = {}
    for key in tqdm(sorted(features), desc="scan layers", unit="layer", disable=None):
        results[key] = _scan_one_layer(features[key], labels, config)
    return results


def _run_on_ray(
    features: dict[tuple[int, str], np.ndarray], labels: np.ndarray, config: ScanConfig
) -> dict[tuple[int, str], list[dict]]:
    import ray

    ensure_ray()
    labels_ref = ray.put(labels)
    scan_task = ray.remote(_scan_one_layer).options(num_cpus=config.ray_task_cpus)
    pending = {scan_task.remote(ray.put(features[key]), labels_ref, config): key for key in sorted(features)}
    results = {}
    with tqdm(total=len(pending), desc="scan layers (ray)", unit="layer", disable=None) as progress:
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            results[pending.pop(done)] = ray.get(done)
            progress.update(1)
    return results


def _select(rows: pd.DataFrame, criterion: str) -> dict[str, tuple[int, str]]:
    """Per target the (layer, pooling) with the highest criterion among its "ok" rows; targets without
    signal get the (layer, pooling) with the highest mean criterion over the targets that have it."""
    column = CRITERION_COLUMN[criterion]
    ok = rows[rows["status"] == OK]
    if ok.empty:
        raise UserError(
            "no target has enough signal to select a layer: every target's rarer class has fewer "
            "training rows than min_minority (lower it, or use more training data)"
        )
    overall_layer, overall_pooling = ok.groupby(["layer", "pooling"])[column].mean().idxmax()
    selection = {}
    for target in rows["target"].unique():
        candidates = ok[ok["target"] == target]
        if candidates.empty:
            selection[target] = (int(overall_layer), str(overall_pooling))
        else:
            best = candidates.loc[candidates[column].idxmax()]
            selection[target] = (int(best["layer"]), str(best["pooling"]))
    return selection


def scan_layers(
    features: dict[tuple[int, str], np.ndarray],
    labels: np.ndarray,
    target_names: list[str],
    config: ScanConfig,
    use_ray: bool = False,
) -> "ScanResult":
    """Probe every (layer, pooling) for every target on the training rows, and select one per target.

    features: (layer, pooling) -> (n_train, d) array, rows aligned with labels.
    labels: (n_train, K) with 1 = target correct, 0 = wrong, NaN = unknown (those rows are left out
    of that target's J and AUC; they still take part in the shared, unsupervised PCA).
    use_ray: one Ray task per (layer, pooling) (config.ray_task_cpus each); same numbers as in-process.
    """
    labels = np.asarray(labels, dtype=np.float64)
    target_names = list(target_names)
    _check_inputs(features, labels, target_names)
    per_layer = (_run_on_ray if use_ray else _run_local)(features, labels, config)
    records = [
        {"target": target, "layer": int(layer), "pooling": str(pooling), **per_layer[(layer, pooling)][index]}
        for index, target in enumerate(target_names)
        for layer, pooling in sorted(per_layer)
    ]
    rows = pd.DataFrame.from_records(records, columns=COLUMNS)
    return ScanResult(rows=rows, selection=_select(rows, config.select), config=config)


@dataclass
class ScanResult:
    """The table of probe statistics (one row per target, layer, pooling) and the per-target selection."""

    rows: pd.DataFrame
    selection: dict[str, tuple[int, str]]
    config: ScanConfig

    @property
    def targets(self) -> list[str]:
        """Target names in their original order."""
        return list(self.rows["target"].unique())

    @property
    def no_signal_targets(self) -> list[str]:
        """Targets marked "not enough signal"; their selection is the overall best (layer, pooling)."""
        has_signal = self.rows.groupby("target", sort=False)["status"].apply(lambda s: (s == OK).any())
        return [target for target, ok in has_signal.items() if not ok]

    def selected_rows(self) -> pd.DataFrame:
        """One row per target: its statistics at the selected (layer, pooling)."""
        chosen = pd.DataFrame(
            [(t, layer, pooling) for t, (layer, pooling) in self.selection.items()],
            columns=["target", "layer", "pooling"],
        )
        return chosen.merge(self.rows, on=["target", "layer", "pooling"], how="left")

    def write(self, out_dir: str | os.PathLike) -> None:
        """Write scan.csv, selection.json and scan.png into out_dir, a local folder or a cloud URI (each
        file replaced atomically)."""
        out = os.fspath(out_dir)
        no_signal = set(self.no_signal_targets)
        selection_file = _SelectionFile(
            format_version=SELECTION_FORMAT_VERSION,
            criterion=self.config.select,
            config=self.config,
            targets={
                row.target: _TargetSelection(
                    layer=int(row.layer),
                    pooling=str(row.pooling),
                    k=int(row.k),
                    fallback=row.target in no_signal,
                )
                for row in self.selected_rows().itertuples()
            },
        )
        storage.write_bytes_atomic(storage.join(out, SCAN_CSV), self.rows.to_csv(index=False).encode())
        storage.write_bytes_atomic(storage.join(out, SELECTION_JSON), selection_file.model_dump_json(indent=2).encode())
        storage.write_bytes_atomic(storage.join(out, SCAN_PNG), _plot(self))

    @classmethod
    def read(cls, out_dir: str | os.PathLike) -> "ScanResult":
        """Load a scan written by `write` (fails with a UserError naming the file when it is unusable)."""
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
        return cls(rows=rows[COLUMNS], selection=selection, config=selection_file.config)

    def terminal_table(self) -> str:
        """Per target the selected (layer, pooling) with its J, AUC and d_eff, then per layer the mean J,
        mean AUC and d_eff of each pooling over the targets with signal, and how many targets chose it."""
        chosen = self.selected_rows()
        no_signal = set(self.no_signal_targets)
        chosen["note"] = [
            f"{NO_SIGNAL} ({row.positives}/{row.n} positive): overall best layer"
            if row.target in no_signal
            else ""
            for row in chosen.itertuples()
        ]
        per_target = chosen[["target", "layer", "pooling", "J", "probe_auc", "d_eff", "n", "positives", "note"]]
        ok = self.rows[self.rows["status"] == OK]
        stats = ["J", "probe_auc", "d_eff"]
        by_layer = ok.pivot_table(index="layer", columns="pooling", values=stats, aggfunc="mean")[stats]
        by_layer.columns = [f"{stat}[{pooling}]" for stat, pooling in by_layer.columns]
        chosen_counts = chosen.groupby("layer")["target"].count().rename("chosen by")
        by_layer = by_layer.join(chosen_counts).fillna({"chosen by": 0}).astype({"chosen by": int})
        criterion = CRITERION_COLUMN[self.config.select]
        return "\n".join(
            [
                f"Selected layer per target (criterion {criterion}, k={self.config.k}):",
                per_target.to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="-"),
                "",
                "Mean over targets with signal, by layer:",
                by_layer.to_string(float_format=lambda x: f"{x:.3f}"),
            ]
        )


def _plot(result: ScanResult) -> bytes:
    """The scan plot as PNG bytes. Top: mean J, d_eff and mean probe AUC vs layer (one line per pooling).
    Below: heatmaps targets x layers of J (scaled by each target's max J) and of probe AUC, one column
    per pooling; a white square marks each target's selected (layer, pooling)."""
    rows = result.rows
    targets = result.targets
    layers = sorted(rows["layer"].unique())
    poolings = sorted(rows["pooling"].unique())
    ok = rows[rows["status"] == OK]
    no_signal = set(result.no_signal_targets)

    heat_width = float(np.clip(0.25 * len(layers) + 2.0, 4.0, 9.0))
    heat_height = float(np.clip(0.22 * len(targets) + 1.2, 2.5, 8.0))
    # A bare Figure renders with the Agg canvas: no pyplot, no global backend state.
    width = max(13.0, heat_width * len(poolings) + 3.0)
    fig = Figure(figsize=(width, 3.8 + 2 * heat_height), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.8, 2 * heat_height])
    fig.suptitle(
        f"Layer scan: {len(targets)} targets, PCA k={result.config.k}, selection by "
        f"{CRITERION_COLUMN[result.config.select]} (white square: a target's selected layer and pooling)",
        fontsize=13,
    )

    line_axes = top.subplots(1, 3)
    means = ok.groupby(["pooling", "layer"])[["J", "probe_auc"]].mean()
    d_eff = rows.groupby(["pooling", "layer"])["d_eff"].first()
    panels = [
        (means["J"], "Fisher J (mean over targets)"),
        (d_eff, f"effective dimensionality d_eff (at most k={result.config.k})"),
        (means["probe_auc"], "probe ROC-AUC (mean over targets)"),
    ]
    for ax, (series, title) in zip(line_axes, panels):
        for pooling in poolings:
            if pooling in series.index.get_level_values("pooling"):
                curve = series.loc[pooling]
                ax.plot(curve.index, curve.values, marker="o", markersize=3, label=pooling)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    line_axes[1].set_ylim(0, max(1.0, 1.1 * float(d_eff.max())))
    line_axes[2].axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    line_axes[0].legend(title="pooling", fontsize=8)

    row_max_j = ok.groupby("target")["J"].max()
    labels = [
        f"{t} (no signal)" if t in no_signal else f"{t} (max J {row_max_j[t]:.3g})" for t in targets
    ]
    heat_axes = bottom.subplots(2, len(poolings), squeeze=False, sharey=True)
    auc_values = ok["probe_auc"]
    auc_top = max(0.6, float(auc_values.max())) if not auc_values.empty else 1.0
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    for column, pooling in enumerate(poolings):
        for row_index, (stat, title, vmin, vmax) in enumerate(
            [("J", "J / target's max J", 0.0, 1.0), ("probe_auc", "probe ROC-AUC", 0.5, auc_top)]
        ):
            grid = ok[ok["pooling"] == pooling].pivot(index="target", columns="layer", values=stat)
            grid = grid.reindex(index=targets, columns=layers)
            if stat == "J":
                grid = grid.div(row_max_j.reindex(targets), axis=0)
            ax = heat_axes[row_index, column]
            image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
            for target_index, target in enumerate(targets):
                layer, chosen_pooling = result.selection[target]
                if chosen_pooling == pooling:
                    ax.scatter(
                        layers.index(layer), target_index, marker="s", s=30, facecolors="none", edgecolors="white"
                    )
            ax.set_title(f"{title}, pooling {pooling}", fontsize=10)
            step = max(1, int(np.ceil(len(layers) / 16)))
            ax.set_xticks(range(0, len(layers), step), [str(layer) for layer in layers[::step]], fontsize=8)
            ax.set_xlabel("layer")
            ax.set_yticks(range(len(targets)), labels, fontsize=7 if len(targets) > 15 else 9)
            if column == len(poolings) - 1:
                fig.colorbar(image, ax=heat_axes[row_index, :], shrink=0.9, label=title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
