"""A layer scan for people: the terminal table and the plot (PNG) of a `ScanResult`."""

import io

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ray_router.model.layer_scan import CRITERION_COLUMN, NO_SIGNAL, OK, ScanResult


def scan_table(result: ScanResult) -> str:
    """Per target the selected (layer, pooling) with its J, AUC and d_eff, then per layer the mean J,
    mean AUC and d_eff of each pooling over the targets with signal, and how many targets chose it."""
    chosen = result.selected_rows()
    no_signal = set(result.no_signal_targets)
    chosen["note"] = [
        f"{NO_SIGNAL} ({row.positives}/{row.n} positive): overall best layer"
        if row.target in no_signal
        else ""
        for row in chosen.itertuples()
    ]
    per_target = chosen[["target", "layer", "pooling", "J", "probe_auc", "d_eff", "n", "positives", "note"]]
    ok = result.rows[result.rows["status"] == OK]
    stats = ["J", "probe_auc", "d_eff"]
    by_layer = ok.pivot_table(index="layer", columns="pooling", values=stats, aggfunc="mean")[stats]
    by_layer.columns = [f"{stat}[{pooling}]" for stat, pooling in by_layer.columns]
    chosen_counts = chosen.groupby("layer")["target"].count().rename("chosen by")
    by_layer = by_layer.join(chosen_counts).fillna({"chosen by": 0}).astype({"chosen by": int})
    criterion = CRITERION_COLUMN[result.config.select]
    return "\n".join(
        [
            f"Selected layer per target (criterion {criterion}, k={result.config.k}):",
            per_target.to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="-"),
            "",
            "Mean over targets with signal, by layer:",
            by_layer.to_string(float_format=lambda x: f"{x:.3f}"),
        ]
    )


def scan_plot_png(result: ScanResult) -> bytes:
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
