"""Local remote-related state of a pool, in `remote.db` next to `meta.db`.

Invariants:
- `bases` rows are written (and committed) before the volume that names
  them, so a volume's base always resolves; unreferenced rows are harmless.
- `packs` caches the header of every pack known on a remote (the chunk
  index used for dedup); it is re-checked against a LIST of the remote at
  the start of every push, so a pack deleted by GC is never trusted. Rows
  are written many packs per transaction (one fsync each): a row lost in a
  crash costs one header GET at the next push, never a wrong dedup.
"""

import json
import os
import sqlite3

from ..transactions import transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS bases (id INTEGER PRIMARY KEY, remote TEXT NOT NULL,
    name TEXT NOT NULL, manifest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packs (remote TEXT NOT NULL, key TEXT NOT NULL,
    entries TEXT NOT NULL, PRIMARY KEY (remote, key));
"""


class LocalState:
    def __init__(self, pool_path):
        self.db = sqlite3.connect(os.path.join(pool_path, "remote.db"),
                                  isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._bases = {}

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
            hit = {"remote": json.loads(row[0]), "name": row[1], "manifest": json.loads(row[2])}
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
