"""The top-level package: lazy re-exports that a type checker sees too, one version."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import personal


def test_all_lists_exactly_the_lazy_exports():
    assert set(personal.__all__) == {"__version__", *personal._EXPORTS}
    assert len(personal.__all__) == len(set(personal.__all__))


def test_every_export_resolves_to_the_object_its_module_defines():
    for name, module in personal._EXPORTS.items():
        assert getattr(personal, name) is getattr(importlib.import_module(module), name)


def test_type_checking_block_imports_every_export():
    # The TYPE_CHECKING block is what users' type checkers read (PEP 562 __getattr__ is Any).
    source = Path(personal.__file__).read_text(encoding="utf-8")
    block = source[source.index("if TYPE_CHECKING:") :]
    for name in personal._EXPORTS:
        assert f" {name}" in block or f"({name}" in block, name


def test_version_is_written_once_and_installed_metadata_agrees():
    assert importlib.metadata.version("personal") == personal.__version__


def test_import_is_lazy_and_never_imports_opacus():
    # torch may come in through transformers (mlx-lm's tokenizers import it when installed);
    # opacus, which `personal` imports itself, only comes in when an accountant is used.
    code = textwrap.dedent(
        """
        import sys, personal
        assert "torch" not in sys.modules and "opacus" not in sys.modules
        assert "personal.personalizer" not in sys.modules
        personal.Personalizer
        assert "personal.personalizer" in sys.modules and "opacus" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_is_an_attribute_error():
    try:
        personal.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
