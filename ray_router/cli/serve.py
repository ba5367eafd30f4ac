"""`ray-router serve CONFIG`: `serve run CONFIG` with the bundle path and port given on the command line."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import yaml

from ray_router.errors import UserError
from ray_router.serving.config import ServeArgs


def prepare_config(config: Path, bundle: str | None, port: int | None) -> dict:
    """The Serve config in CONFIG with every application's `bundle` and the HTTP port replaced when given;
    each application's args are checked."""
    try:
        document = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{config}: cannot read the Serve config ({err})") from None
    applications = document.get("applications") if isinstance(document, dict) else None
    if not applications:
        raise UserError(f"{config}: no `applications:` list (see serve_configs/local-cpu.yaml)")
    for app in applications:
        args = app.setdefault("args", {})
        if bundle is not None:
            args["bundle"] = str(Path(bundle).expanduser().resolve())
        elif "bundle" in args:  # relative to the directory serve is run from
            args["bundle"] = str(Path(args["bundle"]).expanduser().resolve())
        ServeArgs.from_user(args)
    if port is not None:
        document.setdefault("http_options", {})["port"] = port
    return document


@click.command("serve")
@click.argument("config", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--bundle", help="router bundle folder (replaces `bundle` in every application's args)")
@click.option("--port", type=int, help="HTTP port (replaces http_options.port)")
def serve_command(config: Path, bundle: str | None, port: int | None) -> None:
    """Run the router on Ray Serve from a Serve config (e.g. serve_configs/local-cpu.yaml) until Ctrl-C."""
    document = prepare_config(config, bundle, port)
    serve_cli = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve")
    if serve_cli is None:
        raise UserError("the `serve` command of Ray Serve is not installed (pip install 'ray[serve]')")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="ray-router-serve-") as resolved:
        yaml.safe_dump(document, resolved, sort_keys=False)
        resolved.flush()
        env = {"RAY_USAGE_STATS_ENABLED": "0", **os.environ}
        sys.exit(subprocess.call([serve_cli, "run", resolved.name], env=env))
