"""Click parameter types and options shared by several commands."""

import click

from ray_router.errors import UserError


class IntList(click.ParamType):
    """A comma-separated list of integers, e.g. `8,12,16` (ranges like `0-30` allowed)."""

    name = "INTS"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        out: list[int] = []
        try:
            for part in str(value).split(","):
                part = part.strip()
                if "-" in part[1:]:
                    lo, hi = part.split("-", 1)
                    out.extend(range(int(lo), int(hi) + 1))
                elif part:
                    out.append(int(part))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        if not out:
            self.fail("give at least one integer", param, ctx)
        return sorted(set(out))


class ChoiceList(click.ParamType):
    """A comma-separated list of values from a fixed set, e.g. `last,mean`."""

    name = "LIST"

    def __init__(self, choices):
        self.choices = tuple(choices)

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        bad = [v for v in items if v not in self.choices]
        if bad or not items:
            self.fail(f"{value!r}: choose from {', '.join(self.choices)}", param, ctx)
        return list(dict.fromkeys(items))


ray_address_option = click.option(
    "--address",
    default=None,
    envvar="RAY_ADDRESS",
    help="Ray cluster to use (default: the one this job runs in, else a local one).",
)


batch_size_option = click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                                 help="Prompts per encoder forward.")
shard_rows_option = click.option("--shard-rows", type=click.IntRange(min=1), default=512, show_default=True,
                                 help="Rows per output shard (what an interrupted run can lose at most).")


def worker_options(command):
    """--concurrency, --num-gpus-per-worker and --cpus-per-worker: the job's Ray Data actors."""
    for option in reversed([
        click.option("--concurrency", type=click.IntRange(min=1), default=None,
                     help="Encoder actors (default: from cluster resources)."),
        click.option("--num-gpus-per-worker", type=click.FloatRange(min=0), default=None,
                     help="Default: 1 when the cluster has GPUs, else 0."),
        click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=0.5,
                     show_default=True),
    ]):
        command = option(command)
    return command


def worker_resources(concurrency: int | None, num_gpus_per_worker: float | None, cpus_per_worker: float):
    """The WorkerResources that the worker options give."""
    from ray_router.resources import WorkerResources

    return WorkerResources(num_workers=concurrency, num_gpus=num_gpus_per_worker, num_cpus=cpus_per_worker)


def key_value_pairs(values: tuple[str, ...], option: str, form: str) -> dict[str, str]:
    """{key: value} from an option given as KEY=VALUE, possibly repeated; UserError naming the option."""
    pairs = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key.strip() or not item.strip():
            raise UserError(f"{option} expects {form}, got {value!r}")
        pairs[key.strip()] = item.strip()
    return pairs
