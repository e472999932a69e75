"""``personal info``: what a base model is (fingerprint, architecture, size)."""

from __future__ import annotations

import json

import click


@click.command("info")
@click.argument("base")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info_command(base: str, as_json: bool) -> None:
    """Describe BASE: a model directory or a bundled name (base-v1, base-v2)."""
    from personal.model.base import load_base
    from personal.runtime import blas_status

    loaded = load_base(base, lazy=True)
    data = loaded.info()
    if as_json:
        click.echo(json.dumps(data))
        return
    for key, value in data.items():
        click.echo(f"{key:>13}: {value if value is not None else '-'}")
    click.echo(f"{'blas':>13}: {blas_status().reason}")


def register(group: click.Group) -> None:
    """Add the model commands to the ``personal`` group."""
    group.add_command(info_command)
