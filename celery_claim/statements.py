"""The named statements of :mod:`celery_claim.sql`, built for one table.

Each :class:`Statement` has its SQLAlchemy construct (for a SQLAlchemy
connection) and, compiled once per driver, its :class:`DriverStatement`:
plain SQL text and parameter names for a DBAPI cursor. Connectors run one or
the other; the SQL and its dialect differences stay in :mod:`celery_claim.sql`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import visitors

from celery_claim import errors, sql, sql_claim, sql_operations

__all__ = ["STATEMENTS", "DriverStatement", "Statement", "Statements", "driver_dialect"]

#: Every named statement: (description, builder). The life cycle's, the
#: coalesced forms of two of them, and the operators'.
STATEMENTS = {**sql.STATEMENTS, **sql_claim.STATEMENTS, **sql_operations.STATEMENTS}


@dataclasses.dataclass(frozen=True)
class DriverStatement:
    """A named statement compiled once to a driver's own SQL, for a DBAPI cursor.

    ``cursor.execute(statement.sql, statement.params(values))`` runs it on any
    DBAPI cursor of that driver (psycopg 3, psycopg2, and Django's cursors on
    either). ``sql`` has named ``%(name)s`` placeholders (``%%`` is a literal
    ``%``), one name per value in ``order``; a name used twice in the
    statement is still one parameter (psycopg sends it once, as one ``$n``),
    so a statement that repeats a value costs no more to send. :meth:`params`
    picks the values by name. The constants SQLAlchemy would bind are rendered
    into the SQL as literals. ``processors`` turn typed values into what the
    driver takes (a JSON result into the driver's JSON wrapper or text).
    """

    name: str
    sql: str
    order: tuple[str, ...]
    processors: dict[str, Callable[[Any], Any]]
    #: The parameters that are bytes (``bytea``): a driver may send them as
    #: they are, in binary format, rather than escaped as text.
    binary: frozenset[str] = frozenset()

    @classmethod
    def compile(cls, name: str, statement: sa.Executable,
                dialect: sa.Dialect) -> DriverStatement:
        """Compile ``statement`` for ``dialect``'s driver (``pyformat`` only)."""
        if dialect.paramstyle != "pyformat":
            raise errors.ClaimConfigurationError(
                "driver statements need a driver with %(name)s parameters",
                statement=name, dialect=dialect.name, driver=dialect.driver)
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        binds = {bind_name: bind for bind, bind_name in compiled.bind_names.items()}
        ours = {bind_name: None for bind_name in binds if bind_name.startswith("p_")}
        constants = {k: v for k, v in compiled.construct_params(ours).items() if k not in ours}
        order: list[str] = []

        def placeholder(match: re.Match[str]) -> str:
            bind_name = match.group(1)
            if bind_name in ours:
                if bind_name[2:] not in order:
                    order.append(bind_name[2:])
                return f"%({bind_name[2:]})s"
            type_ = binds[bind_name].type.dialect_impl(dialect)
            literal = type_.literal_processor(dialect)
            if literal is None:
                raise errors.ClaimConfigurationError(
                    "cannot render a constant of the statement", statement=name, bind=bind_name)
            return str(literal(constants[bind_name])).replace("%", "%%")

        text = re.sub(r"%\((\w+)\)s", placeholder, str(compiled.string))
        processors: dict[str, Callable[[Any], Any]] = {}
        for bind_name in ours:
            process = binds[bind_name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[bind_name[2:]] = process
        binary = frozenset(bind_name[2:] for bind_name in ours
                           if isinstance(binds[bind_name].type, sa.LargeBinary))
        return cls(name, text, tuple(order), processors, binary)

    def params(self, values: dict[str, Any]) -> dict[str, Any]:
        """The driver's parameters, by name, from the statement's own names."""
        processors = self.processors
        if not processors:
            return {name: values[name] for name in self.order}
        get = processors.get
        return {name: value if (process := get(name)) is None else process(value)
                for name in self.order for value in (values[name],)}


def driver_dialect(driver: str) -> sa.Dialect:
    """The SQLAlchemy dialect that compiles :class:`DriverStatement` for a
    PostgreSQL driver: ``"psycopg"`` (psycopg 3) or ``"psycopg2"``."""
    if driver == "psycopg":
        from sqlalchemy.dialects.postgresql import psycopg as module
    elif driver == "psycopg2":
        from sqlalchemy.dialects.postgresql import psycopg2 as module  # type: ignore[no-redef]
    else:
        raise errors.ClaimConfigurationError(
            "celery-claim runs on PostgreSQL through psycopg (3) or psycopg2", driver=driver)
    dialect: sa.Dialect = module.dialect()  # type: ignore[no-untyped-call]
    return dialect


class Statement:
    """One named statement: its SQLAlchemy form and its driver forms."""

    __slots__ = ("_driver", "description", "executable", "make_row", "name", "own_transaction")

    def __init__(self, name: str, description: str, executable: sa.Executable) -> None:
        self.name = name
        self.description = description
        #: The SQLAlchemy construct (for a SQLAlchemy connection).
        self.executable = executable
        #: Whether it takes ``own_transaction`` (a duplicate's statement on
        #: PostgreSQL): the connector sets it at each run
        #: (``Connector._own_transaction``).
        self.own_transaction = any(
            isinstance(element, sa.BindParameter) and element.key == "p_own_transaction"
            for element in visitors.iterate(executable))  # type: ignore[arg-type]
        self._driver: dict[tuple[str, str], DriverStatement] = {}
        #: Makes one row (a named tuple) from a cursor's tuple; set on first use
        #: by :func:`celery_claim.connectors.base.cursor_result`.
        self.make_row: Callable[[Any], Any] | None = None

    def __repr__(self) -> str:
        return f"<Statement {self.name}: {self.description}>"

    def driver(self, dialect: sa.Dialect) -> DriverStatement:
        """This statement compiled for ``dialect``'s driver (once per driver)."""
        ident = (dialect.name, dialect.driver)
        compiled = self._driver.get(ident)
        if compiled is None:
            compiled = self._driver[ident] = DriverStatement.compile(
                self.name, self.executable, dialect)
        return compiled


class Statements:
    """The named statements built once for one table on one dialect."""

    def __init__(self, table: sa.Table, dialect: str) -> None:
        if dialect not in ("postgresql", "sqlite"):
            raise errors.ClaimConfigurationError(
                "celery-claim supports PostgreSQL (postgresql+psycopg://) and SQLite only",
                dialect=dialect,
            )
        self.table = table
        self.dialect = dialect
        self._named = {name: Statement(name, description, build(table, dialect))
                       for name, (description, build) in STATEMENTS.items()}

    def __getitem__(self, name: str) -> sa.Executable:
        """Statement ``name``'s SQLAlchemy construct."""
        return self._named[name].executable

    def get(self, name: str) -> Statement:
        """Statement ``name``."""
        return self._named[name]

    def driver(self, name: str, dialect: sa.Dialect) -> DriverStatement:
        """Statement ``name`` compiled for ``dialect``'s driver (built once)."""
        return self._named[name].driver(dialect)
