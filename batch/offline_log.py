"""The offline event log, as the batch engine sees it.

The log's layout and writer live in :mod:`parity.registry.offline_log`, shared with the
stream engine, which lands events there too (batch/ and streaming/ never import each
other). This module re-exports them for the batch engine.
"""

from parity.registry.offline_log import (  # noqa: F401
    LANDED_PARTITION, META_COLUMNS, OfflineLog, arrow_type, snapshot_scan_sql, sql_ident, sql_string,
)
