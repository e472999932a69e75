"""The ``personal`` command: a thin layer over the library.

Each feature area keeps its commands in its own module with a ``register(group)`` function;
this module only builds the group and maps :class:`~personal.errors.PersonalError` (and, as a
last line, an ``OSError`` on a given path or a ``RecursionError`` on nested input) to a clean
message and exit status 2 (never a traceback for bad input).
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import NoReturn

import personal
from personal.errors import PersonalError

import click

# Modules whose register(group) adds subcommands, in help order.
_COMMAND_MODULES = (
    "personal.cli.model",
    "personal.cli.store",
    "personal.cli.memory",
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
            _fail(str(exc))
        except RecursionError:  # input nested deeper than any parser here follows
            _fail(
                "the input is nested too deeply to be read (JSON or TOML hundreds of levels deep)"
            )
        except OSError as exc:  # a path given on the command line: missing, a directory, ...
            where = f" {exc.filename}" if exc.filename else ""
            _fail(f"cannot use{where}: {exc.strerror or exc}")


def _fail(message: str) -> NoReturn:
    """Bad input or environment: a message and exit status 2, never a traceback."""
    click.echo(f"error: {message}", err=True)
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
