"""Deterministic assignment of customers to control groups and message variants.

A customer's place is a stable hash of a salt and the customer id, read as a number in [0, 1): the
same on every tick, after restarts and on every machine, and independent between salts, so being in
one playbook's holdout says nothing about another's or about a variant.

* a playbook's holdout (``holdout: 10%``): salt ``holdout:<playbook>``, in it when the number is below
  the share;
* the global control group (``AUTOMATION_GLOBAL_CONTROL=5%``): salt ``global-control``, the same for
  every playbook;
* a step's variant (``variants: {welcome: 50, welcome_short: 50}``): salt
  ``variant:<playbook>:<step>``, the weights cut [0, 1) into consecutive ranges in the order written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

GLOBAL_SALT = "global-control"
_SCALE = float(1 << 64)


def position(salt: str, customer_id: str) -> float:
    """The customer's number in [0, 1) for ``salt``: the first 8 bytes of SHA-256 of both."""
    digest = hashlib.sha256(f"{salt}\x00{customer_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def in_holdout(playbook: str, customer_id: str, share: float) -> bool:
    return share > 0 and position(f"holdout:{playbook}", customer_id) < share


def in_global_control(customer_id: str, share: float) -> bool:
    return share > 0 and position(GLOBAL_SALT, customer_id) < share


def variant(playbook: str, step: str, customer_id: str, weights: Mapping[str, int]) -> str:
    """The variant (a template name) of ``weights`` this customer gets for this step."""
    total = sum(weights.values())
    point = position(f"variant:{playbook}:{step}", customer_id) * total
    reached = 0
    for name, weight in weights.items():
        reached += weight
        if point < reached:
            return name
    return next(reversed(list(weights)))  # not reached: point < total always
