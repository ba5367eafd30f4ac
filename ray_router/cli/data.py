"""`ray-router data ...`: import benchmark data into a routing dataset, and describe one."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ray_router.cli.options import key_value_pairs
from ray_router.data.routing_dataset import RoutingDataset
from ray_router.errors import UserError


class _FormatGroup(click.Group):
    """A group whose unknown subcommand is a one-line UserError instead of a usage screen."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            raise UserError(f"unknown import format {args[0]!r} (choose from: {', '.join(self.list_commands(ctx))})")
        return super().resolve_command(ctx, args)


@click.group()
def data():
    """Routing datasets: import benchmark results, describe a dataset."""


@data.group("import", cls=_FormatGroup)
def import_():
    """Import a benchmark's files into a routing dataset (Parquet)."""


_OUT = click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Parquet file to write."
)
_SOURCE = click.argument("source", type=click.Path(path_type=Path))


def _finish(dataset: RoutingDataset, out: Path) -> None:
    """Write the dataset and print what the importer did."""
    dataset.write(out)
    for note in dataset.source.get("notes", []):
        click.echo(note)
    splits = dataset.splits
    click.echo(
        f"wrote {out}: {len(dataset)} queries x {len(dataset.targets)} targets "
        f"(train {(splits == 'train').sum()}, test {(splits == 'test').sum()})"
    )


@import_.command("routerbench")
@_SOURCE
@_OUT
def import_routerbench_command(source: Path, out: Path):
    """RouterBench wide CSVs (a folder, or one file; the upstream .pkl layout too).

    Split from the file name (..._train / ..._test); rows sharing a sample_id are merged."""
    from ray_router.data.importers.routerbench import import_routerbench

    _finish(import_routerbench(source), out)


@import_.command("mmlu-pro")
@_SOURCE
@_OUT
@click.option(
    "--prices",
    type=click.Path(path_type=Path),
    help="CSV: model,input_usd_per_mtok,output_usd_per_mtok. Without it costs stay null.",
)
def import_mmlu_pro_command(source: Path, out: Path, prices: Path | None):
    """A folder of MMLU-Pro model_outputs_<MODEL>_<N>shots.zip archives (one target each)."""
    from ray_router.data.importers.mmlu_pro import import_mmlu_pro

    _finish(import_mmlu_pro(source, prices=prices), out)


@import_.command("table")
@_SOURCE
@_OUT
@click.option("--mapping", "mapping_file", type=click.Path(path_type=Path), help="YAML file with the mapping keys.")
@click.option("--prompt-col", help="Column with the prompt text.")
@click.option("--id-col", help="Column with unique query ids (default: sha256 of the prompt).")
@click.option("--correct", multiple=True, metavar="TARGET=COLUMN", help="Correctness column of a target (repeat).")
@click.option("--cost", multiple=True, metavar="TARGET=COLUMN", help="Cost (USD) column of a target (repeat).")
@click.option("--output-tokens", multiple=True, metavar="TARGET=COLUMN", help="Output-token column (repeat).")
@click.option("--split-col", help="Column with train/test (default: deterministic hash split).")
@click.option("--task-col", help="Column with the task name.")
@click.option("--category-col", help="Column with the category.")
@click.option("--prices", type=click.Path(path_type=Path), help="CSV: model,input_usd_per_mtok,output_usd_per_mtok.")
def import_table_command(
    source: Path,
    out: Path,
    mapping_file: Path | None,
    prompt_col: str | None,
    id_col: str | None,
    correct: tuple[str, ...],
    cost: tuple[str, ...],
    output_tokens: tuple[str, ...],
    split_col: str | None,
    task_col: str | None,
    category_col: str | None,
    prices: Path | None,
):
    """A CSV / JSONL / Parquet table in wide layout, with a column mapping.

    The mapping comes from --mapping (YAML with keys prompt, id, split, task, category, and correct /
    cost / output_tokens as {target: column}) and/or the options, which take precedence."""
    from ray_router.data.importers.table import (
        build_mapping,
        import_table,
        load_mapping,
    )

    mapping = load_mapping(mapping_file) if mapping_file else {}
    scalars = {"prompt": prompt_col, "id": id_col, "split": split_col, "task": task_col, "category": category_col}
    mapping.update({key: value for key, value in scalars.items() if value is not None})
    per_target = {"correct": (correct, "--correct"), "cost": (cost, "--cost")}
    per_target["output_tokens"] = (output_tokens, "--output-tokens")
    for key, (values, option) in per_target.items():
        if values:
            mapping[key] = {**(mapping.get(key) or {}), **key_value_pairs(values, option, "TARGET=COLUMN")}
    where = str(mapping_file) if mapping_file else "table mapping (--prompt-col, --correct, ... or --mapping)"
    _finish(import_table(source, build_mapping(mapping, where), prices=prices), out)


@data.command("describe")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")
def describe(file: Path, as_json: bool):
    """Rows, targets, per-target accuracy and cost, best single, oracle and agreement zones per split."""
    from ray_router.data.summary import format_summary, summarize

    summary = summarize(RoutingDataset.read(file))
    if as_json:
        click.echo(json.dumps(summary.model_dump(mode="json"), indent=2))
    else:
        click.echo(format_summary(summary, name=str(file)))
