"""Metadata store: one SQLite database (WAL, synchronous=FULL) per pool.

Invariants:
- The database is written only by `MetaStore.commit`, one transaction per
  call, from at most one thread at a time (the pool serializes commits).
  Whatever it holds is therefore a state the pool really had at a commit.
- Map nodes and slot reference counts are stored as fixed-size blobs, the
  partial slots (partial.py) as rows written in the same transaction; the
  engine keeps the authoritative copy in memory and hands the store only
  the rows that changed since the previous commit.
- Tables added since format 1 was first written (ADDED_TABLES) are created
  when a pool opens, as missing columns are added: older pools open. Space
  accounting columns (a node's `pos`, `mapped`, `sole`; an image's `cold`)
  are NULL in a pool written before them: the pool recounts once at open
  (extentmap.py, image.py) and stores the counts with the next commit.
  A new pool has a node's summaries before its data in the row, so that
  loading them at open reads no blob (an older pool has them after it).
"""

import json
import sqlite3

from .errors import Corrupt
from .transactions import transaction

FORMAT_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS volumes (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, size INTEGER NOT NULL,
    root INTEGER NOT NULL, created REAL NOT NULL, origin TEXT,
    base INTEGER, base_chunks INTEGER NOT NULL DEFAULT 0,
    deleting INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY, volume_id INTEGER NOT NULL, name TEXT NOT NULL,
    size INTEGER NOT NULL, root INTEGER NOT NULL, created REAL NOT NULL,
    labels TEXT NOT NULL, base INTEGER, base_chunks INTEGER NOT NULL DEFAULT 0,
    deleting INTEGER NOT NULL DEFAULT 0, group_name TEXT, holds TEXT NOT NULL DEFAULT '{}',
    UNIQUE (volume_id, name));
CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, rc INTEGER NOT NULL,
    pos INTEGER, mapped INTEGER, sole INTEGER, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS slot_rc (block INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS slot_hash (slot INTEGER PRIMARY KEY, hash TEXT NOT NULL);
"""

VOLUME_COLUMNS = ("id", "name", "size", "root", "created", "origin", "base", "base_chunks",
                  "deleting", "cold")
SNAPSHOT_COLUMNS = ("id", "volume_id", "name", "size", "root", "created", "labels",
                    "base", "base_chunks", "deleting", "group_name", "holds", "cold")
NODE_SUMMARY = ("pos", "mapped", "sole")     # see extentmap.py
JSON_COLUMNS = ("labels", "holds")
ADDED_COLUMNS = [   # (table, column definition) added since format 1 was first written
    ("volumes", "deleting INTEGER NOT NULL DEFAULT 0"),
    ("snapshots", "deleting INTEGER NOT NULL DEFAULT 0"),
    ("snapshots", "group_name TEXT"),
    ("snapshots", "holds TEXT NOT NULL DEFAULT '{}'"),
    ("volumes", "cold INTEGER"),
    ("snapshots", "cold INTEGER"),
    ("nodes", "pos INTEGER"),
    ("nodes", "mapped INTEGER"),
    ("nodes", "sole INTEGER"),
]


class MetaStore:
    def __init__(self, path):
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            self._add_missing_columns()
            self._add_missing_tables()
        except sqlite3.DatabaseError as exc:
            raise Corrupt(f"cannot open pool metadata {path}: {exc}") from exc

    def close(self):
        self.db.close()

    def _add_missing_columns(self):
        """Pools written before a column existed get it, with its default."""
        for table, definition in ADDED_COLUMNS:
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if definition.split()[0] not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {definition}")

    # -- reading (at open, and lazily for map nodes) --------------------------
    def get_meta(self):
        return dict(self.db.execute("SELECT key, value FROM meta"))

    def init_meta(self, values):
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, str(v)) for k, v in values.items()])

    def load_volumes(self):
        cols = ", ".join(VOLUME_COLUMNS)
        return [dict(zip(VOLUME_COLUMNS, row))
                for row in self.db.execute(f"SELECT {cols} FROM volumes")]

    def load_snapshots(self):
        cols = ", ".join(SNAPSHOT_COLUMNS)
        rows = [dict(zip(SNAPSHOT_COLUMNS, row))
                for row in self.db.execute(f"SELECT {cols} FROM snapshots")]
        for row in rows:
            for column in JSON_COLUMNS:
                row[column] = json.loads(row[column])
        return rows

    def load_node_refcounts(self):
        return dict(self.db.execute("SELECT id, rc FROM nodes"))

    def load_node_summaries(self):
        """[(id, pos, mapped, sole)] of every node (NULLs in older pools)."""
        return list(self.db.execute("SELECT id, pos, mapped, sole FROM nodes"))

    def load_node(self, node_id):
        row = self.db.execute("SELECT data FROM nodes WHERE id = ?", (node_id,)).fetchone()
        if row is None:
            raise Corrupt(f"map node {node_id} is missing from the metadata store")
        return row[0]

    def load_slot_blocks(self):
        return list(self.db.execute("SELECT block, data FROM slot_rc ORDER BY block"))

    def load_partial_slots(self):
        """[(slot, old slot, bitmap bytes, chunk)] of the partial slots (partial.py)."""
        return list(self.db.execute("SELECT slot, old, blocks, chunk FROM partial_slots"))

    def hashed_slots(self):
        """The slots that have a cached content hash."""
        return (slot for (slot,) in self.db.execute("SELECT slot FROM slot_hash"))

    def load_slot_hashes(self, slots):
        out = {}
        slots = list(slots)
        for i in range(0, len(slots), 500):
            part = slots[i:i + 500]
            out.update(self.db.execute(
                f"SELECT slot, hash FROM slot_hash WHERE slot IN ({','.join('?' * len(part))})",
                part))
        return out

    # -- writing ---------------------------------------------------------------
    def commit(self, batch):
        """Apply one CommitBatch atomically."""
        with self._transaction():
            db = self.db
            db.executemany("DELETE FROM volumes WHERE id = ?", [(i,) for i in batch.deleted_volumes])
            db.executemany("DELETE FROM snapshots WHERE id = ?",
                           [(i,) for i in batch.deleted_snapshots])
            db.executemany(f"INSERT OR REPLACE INTO volumes ({', '.join(VOLUME_COLUMNS)}) "
                           f"VALUES ({', '.join('?' * len(VOLUME_COLUMNS))})",
                           [tuple(row[c] for c in VOLUME_COLUMNS) for row in batch.volumes])
            db.executemany(f"INSERT OR REPLACE INTO snapshots ({', '.join(SNAPSHOT_COLUMNS)}) "
                           f"VALUES ({', '.join('?' * len(SNAPSHOT_COLUMNS))})",
                           [tuple(json.dumps(row[c], sort_keys=True) if c in JSON_COLUMNS else row[c]
                                  for c in SNAPSHOT_COLUMNS) for row in batch.snapshots])
            db.executemany("DELETE FROM nodes WHERE id = ?", [(i,) for i in batch.deleted_nodes])
            db.executemany("INSERT OR REPLACE INTO nodes (id, rc, data, pos, mapped, sole) "
                           "VALUES (?, ?, ?, ?, ?, ?)", batch.nodes)
            db.executemany("UPDATE nodes SET rc = ?, pos = ?, mapped = ?, sole = ? WHERE id = ?",
                           batch.node_rcs)
            db.executemany("INSERT OR REPLACE INTO slot_rc (block, data) VALUES (?, ?)",
                           batch.slot_blocks)
            db.executemany("DELETE FROM partial_slots WHERE slot = ?",
                           [(s,) for s in batch.slot_state.partials_gone])
            db.executemany("INSERT OR REPLACE INTO partial_slots (slot, old, blocks, chunk) "
                           "VALUES (?, ?, ?, ?)", batch.slot_state.partial_rows)
            db.executemany("INSERT OR REPLACE INTO slot_hash (slot, hash) VALUES (?, ?)",
                           batch.slot_hashes)
            db.executemany("DELETE FROM slot_hash WHERE slot = ?",
                           [(s,) for s in batch.freed_slots])
            self._write_policies(batch.policies)

    def _transaction(self):
        return transaction(self.db)

    # -- policies (rokfs/policy.py): one row per target, written with the commits ----------
    def _add_missing_tables(self):
        for table in ADDED_TABLES:
            self.db.execute(table)

    def load_policies(self):
        """{target: {"spec": text, "anchor": time or None}}"""
        return {target: {"spec": spec, "anchor": anchor} for target, spec, anchor in
                self.db.execute("SELECT target, spec, anchor FROM policies")}

    def _write_policies(self, policies):
        """[(target, record or None to delete)] inside the commit's transaction."""
        self.db.executemany("DELETE FROM policies WHERE target = ?",
                            [(t,) for t, record in policies if record is None])
        self.db.executemany("INSERT OR REPLACE INTO policies (target, spec, anchor) "
                            "VALUES (?, ?, ?)", [(t, r["spec"], r["anchor"])
                                                 for t, r in policies if r is not None])


ADDED_TABLES = [   # created when missing (pools written before they existed)
    "CREATE TABLE IF NOT EXISTS policies (target TEXT PRIMARY KEY, spec TEXT NOT NULL, "
    "anchor REAL)",
    "CREATE TABLE IF NOT EXISTS partial_slots (slot INTEGER PRIMARY KEY, old INTEGER NOT NULL, "
    "blocks BLOB NOT NULL, chunk INTEGER NOT NULL)",
]
