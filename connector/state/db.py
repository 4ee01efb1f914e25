"""The state db: pool items and their lifecycle, rounds and their phases, frozen
selections, pushes, label history, alerts and admin commands.

SQLite in WAL mode is the embedded default. Every write happens in a short transaction
(``BEGIN IMMEDIATE``), so a crash leaves the db at the last committed phase or push
chunk, and a restart resumes from there. The schema is versioned with
``PRAGMA user_version`` and migrated forward on open. No SQL is written outside this
package.
"""

from __future__ import annotations

from connector.state.admin import AdminQueries
from connector.state.alerts import AlertQueries
from connector.state.items import ItemQueries
from connector.state.rounds import RoundQueries


class StateDB(ItemQueries, RoundQueries, AlertQueries, AdminQueries):
    """The state db: every query the connector makes, by subject."""
