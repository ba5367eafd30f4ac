"""The `ray-router` command line. Each command group lives in its own module of this package."""

import sys

import click

from ray_router.errors import UserError


class _Group(click.Group):
    """Turns a UserError anywhere below into one `error: ...` line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="ray-router")
def main():
    """ray-router: LLM routing from prefill activations, on Ray."""


def _register():
    from ray_router.cli.data import data
    from ray_router.cli.demo import demo
    from ray_router.cli.evaluate import evaluate
    from ray_router.cli.extract import extract
    from ray_router.cli.route import route
    from ray_router.cli.serve import serve_command
    from ray_router.cli.train import scan_layers_command, train

    for command in (data, extract, scan_layers_command, train, evaluate, route, serve_command, demo):
        main.add_command(command)


_register()
