"""Click parameter types shared by several commands."""

import click


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
