"""The package's rooms and their one-way arrows, as docs/architecture.md draws them.

Every module of ``celery_claim`` belongs to one room of :data:`ROOMS`; a room
may import its own modules and the rooms it lists, nothing else. Imports are
read with ``ast`` from the source: top-level ones, those inside functions and
under ``TYPE_CHECKING``, and modules named by string for Celery or importlib
to load (``"celery_claim._request:TimeoutRequeueRequest"``).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "celery_claim"

#: room: (its modules, each with its submodules; the rooms it may import).
#: Bottom to top. Keep docs/architecture.md in step with this table.
ROOMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # The floor: values every room shares; no import of the package.
    "floor": (("errors", "states", "results", "signals"), ()),
    "sql": (("sql", "sql_claim", "sql_settle", "sql_operations", "statements"), ("floor",)),
    # They read two constants of sql: the key length limit and the table name rule.
    "settings": (("settings", "keys"), ("sql", "floor")),
    "connector": (("connectors",), ("sql", "floor")),
    "store": (("store", "records", "coalesce", "upgrade"), ("connector", "sql", "floor")),
    # lease is here, not below the store: its heartbeat renews through the store.
    "lifecycle": (("lifecycle", "claim", "lease", "recovery", "reporting", "callbacks"),
                  ("store", "connector", "settings", "sql", "floor")),
    "task": (("task", "startup", "compat", "_request"),
             ("lifecycle", "store", "settings", "sql", "floor")),
    # The package's public names, loaded on first use.
    "facade": (("__init__",), ("task", "lifecycle", "store", "settings", "sql", "floor")),
    # On top: imported by nothing in the core.
    "admin": (("_admin", "tasks"), ("core",)),
    "cli": (("cli", "_cli_operations"), ("admin", "demo", "soak", "core")),
    "metrics": (("metrics",), ("core",)),
    "testing": (("testing",), ("core",)),
    "proof": (("proof",), ("testing", "core")),
    "demo": (("demo", "_demo_app", "_demo_transport"), ("proof", "testing", "core")),
    "soak": (("soak", "_soak_run", "_soak_app"), ("proof", "testing", "core")),
    # Its manage.py command runs the command line's operations.
    "django": (("django",), ("cli", "admin", "core")),
}
#: "core" in a list of allowed rooms: every room from the floor to the facade.
CORE = ("floor", "sql", "settings", "connector", "store", "lifecycle", "task", "facade")

#: Imports against an arrow that the code has today: (importer, imported): why.
EXCEPTIONS: dict[tuple[str, str], str] = {}

_MODULE_STRING = re.compile(r"^celery_claim(?:\.\w+)+(?::\w+)?$")


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _existing(name: str) -> str | None:
    """``name`` or the nearest package above it that is a module of ours."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in its source."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from celery_claim import errors` imports a submodule; `import ClaimTask`, the facade.
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules()
                       else source for alias in node.names]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and _MODULE_STRING.match(node.value)):
            targets = [node.value.partition(":")[0]]
        for target in targets:
            if target == "celery_claim" or target.startswith("celery_claim."):
                resolved = _existing(target)
                if resolved is not None and resolved != module:
                    found.add(resolved)
    return found


def room_of(module: str) -> str | None:
    short = module.removeprefix("celery_claim").removeprefix(".") or "__init__"
    for room, (members, _) in ROOMS.items():
        if any(short == m or short.startswith(f"{m}.") for m in members):
            return room
    return None


def allowed(room: str) -> set[str]:
    rooms = {room}
    for name in ROOMS[room][1]:
        rooms |= set(CORE) if name == "core" else {name}
    return rooms


def test_every_module_has_a_room() -> None:
    homeless = [m for m in modules() if room_of(m) is None]
    assert not homeless, (
        f"{homeless}: give each a room in ROOMS (tests/unit/test_architecture.py) and a line "
        "in docs/architecture.md")


def test_every_room_names_rooms_that_exist() -> None:
    for room, (_, uses) in ROOMS.items():
        assert set(uses) <= set(ROOMS) | {"core"}, room


def violations(module: str, targets: set[str]) -> list[str]:
    """One line per import of ``targets`` by ``module`` that goes against an arrow."""
    room = room_of(module)
    assert room is not None, module
    broken = []
    for target in sorted(targets):
        target_room = room_of(target)
        if target_room in allowed(room) or (module, target) in EXCEPTIONS:
            continue
        broken.append(f"{module} ({room}) imports {target} ({target_room}): there is no "
                      f"arrow {room} -> {target_room} (docs/architecture.md); {room} may "
                      f"import only {', '.join(sorted(allowed(room) - {room})) or 'nothing'}")
    return broken


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_follow_the_arrows(module: str) -> None:
    broken = violations(module, imports(module))
    assert not broken, "\n".join(broken)


def test_no_core_module_imports_a_room_on_top() -> None:
    # The same rule seen from below: what the core may reach is the core.
    for module in modules():
        if room_of(module) in CORE:
            above = {t for t in imports(module) if room_of(t) not in CORE}
            assert not above or all((module, t) in EXCEPTIONS for t in above), (module, above)


def test_the_exceptions_are_still_needed() -> None:
    stale = [pair for pair in EXCEPTIONS if pair[1] not in imports(pair[0])]
    assert not stale, f"no longer imported: remove them from EXCEPTIONS: {stale}"


def test_the_reader_sees_each_kind_of_import() -> None:
    # The checks above can fail: a function-level import, a TYPE_CHECKING one,
    # a relative one and a module named by string are all found.
    assert "celery_claim.connectors.sqlalchemy" in imports("celery_claim.store")  # in a method
    assert "celery_claim.task" in imports("celery_claim.startup")  # in functions
    assert "celery_claim.connectors.base" in imports("celery_claim.connectors")
    assert "celery_claim._request" in imports("celery_claim.compat")  # a string for Celery
    assert "celery_claim.task" in imports("celery_claim")  # the facade's lazy map
    assert room_of("celery_claim.connectors._psycopg") == "connector"


def test_an_import_against_an_arrow_is_named() -> None:
    # What a store that imported the command line, or the task, would be told.
    broken = violations("celery_claim.store", {"celery_claim.cli", "celery_claim.task",
                                               "celery_claim.sql"})
    assert broken == [
        "celery_claim.store (store) imports celery_claim.cli (cli): there is no arrow "
        "store -> cli (docs/architecture.md); store may import only connector, floor, sql",
        "celery_claim.store (store) imports celery_claim.task (task): there is no arrow "
        "store -> task (docs/architecture.md); store may import only connector, floor, sql",
    ]
    assert violations("celery_claim.errors", {"celery_claim.sql"})


def test_the_architecture_page_names_every_room_member() -> None:
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for room, (members, _) in ROOMS.items():
        for member in members:
            path = PACKAGE / member
            shown = f"`{member}/`" if path.is_dir() or room == "django" else f"`{member}.py`"
            assert shown in page, f"docs/architecture.md does not show {shown} ({room})"


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_is_over_400_lines(module: str) -> None:
    lines = modules()[module].read_text().count("\n")
    assert lines <= 400, f"{module} has {lines} lines: split it by what its parts are for"
