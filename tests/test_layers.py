"""Each layer only imports the layers below it (README.md, "Architecture"; issue 20).

Every module under src/personal is parsed, not imported, and every import it makes is checked:
at module level, inside a function or under ``TYPE_CHECKING``, ``import x`` and ``from x import
y``, relative imports resolved. A failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "personal"

#: README.md's drawing, top to bottom. A package (or top-level module) imports its own layer and
#: the layers below it, never a layer above. ``personal`` is the package's own ``__init__``: the
#: names an app imports (``from personal import Personalizer``; a bare ``import personal`` is
#: allowed anywhere: the package runs first anyway, and eagerly only configures BLAS).
LAYERS: dict[str, tuple[str, ...]] = {
    "command line": ("personal.cli", "personal"),
    "facade": (
        "personal.personalizer",
        "personal.integrity",  # `personal verify` / `repair`: the round lock, the replay buffer
        "personal.canary_audit",  # `personal audit --canaries`: a round on a Personalizer copy
    ),
    "training": ("personal.training",),
    "middle": (
        "personal.adapters",
        "personal.privacy",  # with privacy.ledger and privacy.audit
        "personal.memory",
        "personal.model",
        "personal.public",
        "personal.kernels",
        "personal.charts",
        "personal.policy",  # the policy, its sections (LoRA settings: personal.model) and specs
        "personal.policy_sections",
        "personal.policy_specs",
    ),
    "bottom": (
        "personal.store",
        "personal.filesafety",
        "personal.data",
        "personal.errors",
        "personal.runtime",
    ),
}

#: The simulators sit beside the library: only the command line loads them (`personal simulate`).
SIMULATORS = ("personal_sim", "simulators")

#: Upward imports not fixed yet: (file under src/personal, the component it imports) -> why.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}

RANK = {name: rank for rank, names in enumerate(reversed(LAYERS.values())) for name in names}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}


def component(module: str) -> str:
    """The entry of LAYERS that ``module`` belongs to (the top-level name outside personal)."""
    parts = module.split(".")
    if parts[0] != "personal":
        return parts[0]
    if len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
        return f"personal.{parts[1]}"
    return "personal"  # the package's __init__, or a name it exports


def module_of(path: Path) -> tuple[str, str]:
    """``(module, package)`` of a file under src/ (a package's package is itself)."""
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        name = ".".join(parts[:-1])
        return name, name
    return ".".join(parts), ".".join(parts[:-1])


def imports(path: Path) -> Iterator[tuple[ast.stmt, str]]:
    """Every ``(statement, absolute module)`` ``path`` imports, anywhere in the file.

    ``from a import b`` yields ``a.b`` (b may be a submodule: ``from personal import kernels``).
    """
    _, package = module_of(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield node, f"{base}.{alias.name}" if alias.name != "*" else base


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def where(path: Path, node: ast.stmt) -> str:
    return f"{path.relative_to(SRC)}:{node.lineno}: `{ast.unparse(node)}`"


def test_every_top_level_module_sits_in_one_layer() -> None:
    found = {component(module_of(path)[0]) for path in sources()}
    placed = [name for names in LAYERS.values() for name in names]
    assert len(placed) == len(set(placed)), "a name sits in two layers"
    unplaced = sorted(found - set(placed))
    assert unplaced == [], f"place each of these in a layer of LAYERS: {unplaced}"
    missing = [n for n in placed if n != "personal" and component(n) != n]
    assert missing == [], f"LAYERS names modules that do not exist: {missing}"


def test_no_layer_imports_a_layer_above_it() -> None:
    upward, known = [], set()
    for path in sources():
        importer = component(module_of(path)[0])
        for node, module in imports(path):
            if module == "personal":  # the bare package: it runs before any of its modules anyway
                continue
            target = component(module)
            if target not in RANK or RANK[target] <= RANK[importer]:
                continue
            key = (path.relative_to(PACKAGE).as_posix(), target)
            if key in KNOWN_UPWARD:
                known.add(key)
                continue
            upward.append(
                f"{where(path, node)}: {importer} ({LAYER_OF[importer]}) imports {target} "
                f"({LAYER_OF[target]}, a layer above)"
            )
    assert upward == [], "\n".join(["imports of a layer above:", *upward])
    assert sorted(set(KNOWN_UPWARD) - known) == [], "fixed: remove it from KNOWN_UPWARD"


def test_only_the_command_line_loads_the_simulators() -> None:
    offenders = [
        where(path, node)
        for path in sources()
        if component(module_of(path)[0]) != "personal.cli"
        for node, module in imports(path)
        if module.split(".")[0] in SIMULATORS
    ]
    assert offenders == [], "\n".join(["the library imports the simulators:", *offenders])
