"""``personal info`` (what a base model is) and ``personal import-model`` (GGUF -> mlx-lm)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("info")
@click.argument("base")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info_command(base: str, as_json: bool) -> None:
    """Describe BASE: a model directory or a bundled name (base-v1, base-v2)."""
    from personal import kernels
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
    click.echo(f"{'kernels':>13}: {kernels.status().reason}")


@click.command("import-model")
@click.argument("gguf", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--dtype",
    default=None,
    metavar="float32|bfloat16|keep",
    help="float32/bfloat16 dequantize, keep stays quantized. Default: keep on a GPU "
    "(Metal), float32 on a CPU (quantized training is ~13x slower there).",
)
@click.option(
    "--chat-template",
    "template_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A Jinja chat template file: needed when the GGUF has none, overrides it otherwise.",
)
def import_model_command(
    gguf: Path, out: Path, dtype: str | None, template_file: Path | None
) -> None:
    """Convert a llama-family GGUF file into an mlx-lm model directory OUT."""
    import time

    from personal.errors import ConfigError
    from personal.model.base import load_base
    from personal.model.catalog import default_dtype
    from personal.model.gguf import import_gguf

    template = None
    if template_file is not None:
        try:
            template = template_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the chat template {template_file}: {exc}") from exc
    start = time.perf_counter()
    chosen = dtype or default_dtype()
    import_gguf(gguf, out, dtype=chosen, chat_template=template)
    base = load_base(out, lazy=True)
    seconds = time.perf_counter() - start
    click.echo(
        f"imported {gguf.name} -> {out} ({chosen}, {base.num_parameters():,} parameters, "
        f"{seconds:.1f} s), fingerprint {base.fingerprint}"
    )


def register(group: click.Group) -> None:
    """Add the model commands to the ``personal`` group."""
    group.add_command(info_command)
    group.add_command(import_model_command)
