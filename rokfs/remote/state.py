"""Local remote-related state of a pool, in `remote.db` next to `meta.db`.

Invariants:
- `bases` rows are written (and committed) before the volume that names
  them, so a volume's base always resolves; unreferenced rows are harmless.
- `packs` caches the header of every pack known on a remote (the chunk
  index used for dedup); it is re-checked against a LIST of the remote at
  the start of every push, so a pack deleted by GC is never trusted. Rows
  are written many packs per transaction (one fsync each): a row lost in a
  crash costs one header GET at the next push, never a wrong dedup.
- Every `packs` row holds entries of a header that passed
  formats.decode_pack_header: rows cached by a rokfs that did not check
  headers are dropped once, when remote.db is first opened by one that
  does (PRAGMA user_version CHECKED_PACKS).
- A base's manifest is checked (formats.check_manifest) when it is loaded,
  so a base recorded from a manifest no rokfs should have accepted is
  Corrupt, not a crash later.
"""

import json
import os
import sqlite3

from .formats import check_manifest
from ..transactions import transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS bases (id INTEGER PRIMARY KEY, remote TEXT NOT NULL,
    name TEXT NOT NULL, manifest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packs (remote TEXT NOT NULL, key TEXT NOT NULL,
    entries TEXT NOT NULL, PRIMARY KEY (remote, key));
"""
CHECKED_PACKS = 1       # user_version from which every packs row was checked


class LocalState:
    def __init__(self, pool_path):
        self.db = sqlite3.connect(os.path.join(pool_path, "remote.db"),
                                  isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._drop_unchecked_packs()
        self._bases = {}

    def _drop_unchecked_packs(self):
        if self.db.execute("PRAGMA user_version").fetchone()[0] < CHECKED_PACKS:
            with transaction(self.db):
                self.db.execute("DELETE FROM packs")
                self.db.execute(f"PRAGMA user_version = {CHECKED_PACKS}")

    def close(self):
        self.db.close()

    def add_base(self, remote_spec, name, manifest):
        cur = self.db.execute("INSERT INTO bases (remote, name, manifest) VALUES (?, ?, ?)",
                              (json.dumps(remote_spec), name, json.dumps(manifest)))
        return cur.lastrowid

    def base(self, base_id):
        hit = self._bases.get(base_id)
        if hit is None:
            row = self.db.execute("SELECT remote, name, manifest FROM bases WHERE id = ?",
                                  (base_id,)).fetchone()
            if row is None:
                from ..errors import Corrupt
                raise Corrupt(f"base {base_id} is missing from remote.db")
            manifest = check_manifest(json.loads(row[2]), f"base {base_id} in remote.db", row[1])
            hit = {"remote": json.loads(row[0]), "name": row[1], "manifest": manifest}
            self._bases[base_id] = hit
        return hit

    def packs(self, remote_url):
        return {key: json.loads(entries) for key, entries in self.db.execute(
            "SELECT key, entries FROM packs WHERE remote = ?", (remote_url,))}

    def add_packs(self, remote_url, packs):
        if not packs:
            return
        with transaction(self.db):
            self.db.executemany("INSERT OR REPLACE INTO packs VALUES (?, ?, ?)",
                                [(remote_url, k, json.dumps(e)) for k, e in packs.items()])

    def forget_packs(self, remote_url, keys):
        if not keys:
            return
        with transaction(self.db):
            self.db.executemany("DELETE FROM packs WHERE remote = ? AND key = ?",
                                [(remote_url, k) for k in keys])
