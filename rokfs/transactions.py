"""SQLite transactions on autocommit connections, for every database rokfs keeps.

Invariants:
- `with transaction(db):` is one BEGIN IMMEDIATE ... COMMIT: one fsync in
  WAL + synchronous=FULL. On any error it rolls back and the block's
  rows are not written; an SQLite error comes out as a RokfsError
  (NoSpace when the disk is full).
- Used by the pool's metadata store (rokfs.store) and the remote state
  (rokfs.remote.state) alike; it knows neither.
"""

import sqlite3

from .errors import NoSpace, RokfsError


def transaction(db):
    """`with transaction(db):` one BEGIN IMMEDIATE ... COMMIT (one fsync in
    WAL + synchronous=FULL), rolled back on error, for autocommit connections."""
    return _Transaction(db)


class _Transaction:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return False
            except sqlite3.Error as err:
                exc = err
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if isinstance(exc, sqlite3.Error):
            raise _sqlite_error(exc) from exc
        return False


def _sqlite_error(exc):
    text = str(exc)
    if "full" in text:
        return NoSpace(f"metadata store: {text}")
    return RokfsError(f"metadata store: {text}")
