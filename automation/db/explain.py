"""Ask PostgreSQL how it would run a statement, to choose between two forms of the same query.

``hashes_every_subplan`` tells whether the planner would answer every ``IN (SELECT ...)`` of a
statement from a hash table built once (``hashed SubPlan N``) rather than by running the subquery
again for each row. It runs it per row when it expects the set not to fit ``hash_mem`` (``work_mem``
x ``hash_mem_multiplier``), or so few rows outside that running it per row costs less.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

_SUBPLAN = re.compile(r"\bSubPlan (\d+)\b")
_HASHED = re.compile(r"\bhashed SubPlan (\d+)\b")


class Explain(Executable, ClauseElement):
    """``EXPLAIN <statement>``, with the statement's own parameters."""

    inherit_cache = False

    def __init__(self, statement: Any) -> None:
        self.statement = statement


@compiles(Explain, "postgresql")
def _explain(element: Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN " + str(compiler.process(element.statement, **kw))


def plan_text(conn: Connection, statement: Any) -> str:
    """The plan PostgreSQL would use for ``statement``, as ``EXPLAIN`` prints it."""
    return "\n".join(str(row[0]) for row in conn.execute(Explain(statement)))


def hashes_every_subplan(plan: str) -> bool:
    """Whether every subplan in ``plan`` (``EXPLAIN`` text) is hashed. A plan without subplans is."""
    return set(_SUBPLAN.findall(plan)) <= set(_HASHED.findall(plan))
