"""The state db: schema and migrations (``schema``) and every query (``db``).

No SQL is written outside this package.
"""

from connector.state.alerts import AlertKind
from connector.state.db import StateDB
from connector.state.schema import (
    ITEM_STATUSES,
    PHASE_ORDER,
    Item,
    Phase,
    Round,
    SelectedItem,
    iso,
    parse_iso,
    utcnow,
)

__all__ = [
    "ITEM_STATUSES",
    "PHASE_ORDER",
    "AlertKind",
    "Item",
    "Phase",
    "Round",
    "SelectedItem",
    "StateDB",
    "iso",
    "parse_iso",
    "utcnow",
]
