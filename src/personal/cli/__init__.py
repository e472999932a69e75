"""The ``personal`` command: a thin layer over the library.

Each feature area keeps its commands in its own module with a ``register(group)`` function;
this module only builds the group and maps :class:`~personal.errors.PersonalError` to a clean
message and exit status 2 (never a traceback for bad input).
"""

from __future__ import annotations

import sys
from importlib import import_module

import personal
from personal.errors import PersonalError

import click

# Modules whose register(group) adds subcommands, in help order.
_COMMAND_MODULES = (
    "personal.cli.model",
    "personal.cli.store",
    "personal.cli.policy",
    "personal.cli.train",
    "personal.cli.adapters",
    "personal.cli.simulate",
)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PersonalError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(personal.__version__, prog_name="personal")
def cli() -> None:
    """Continual, differentially private on-device personalization."""


for _module in _COMMAND_MODULES:
    import_module(_module).register(cli)


def main() -> None:
    """Entry point of the ``personal`` console script."""
    cli(prog_name="personal")
