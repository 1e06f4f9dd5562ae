"""What a pool keeps of the registry, in `registry.db` next to `meta.db`:
the publisher keys it trusts and its subscriptions.

Invariants:
- A subscription's `version` and `digest` are the newest version it has
  made local snapshots of, written (and committed) only after those
  snapshots are committed in the pool: after a crash a sync sees that
  version again and finds its snapshots there (sync is idempotent).
- `version` only grows: a head older than it is a replay, refused.
- `hydrate` false: the subscription's images fetch only what is read
  (their background hydration is paused whenever the daemon starts).
- `data_keys` holds the data keys of private buckets this pool has
  unwrapped (as a reader), so that their images hydrate after a restart;
  registry.db is created 0600 for that reason.
- `acl_serials` only grows: an ACL older than one this pool has seen (a
  replay that would bring back a revoked reader's generation) is refused.
- Trust is per scope: a team (`team`, every bucket of it) or a bucket
  (`team/exp1`).
"""

import json
import os
import sqlite3

from ..errors import NotFound
from ..transactions import transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS trust (scope TEXT NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (scope, key));
CREATE TABLE IF NOT EXISTS subscriptions (bucket TEXT PRIMARY KEY, remote TEXT NOT NULL,
    local TEXT NOT NULL, clone INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 0,
    digest TEXT, created REAL NOT NULL, hydrate INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS data_keys (bucket TEXT NOT NULL, generation INTEGER NOT NULL,
    key TEXT NOT NULL, PRIMARY KEY (bucket, generation));
CREATE TABLE IF NOT EXISTS acl_serials (bucket TEXT PRIMARY KEY, serial INTEGER NOT NULL);
"""
FIELDS = ("bucket", "remote", "local", "clone", "version", "digest", "created", "hydrate")


class RegistryState:
    def __init__(self, pool_path):
        path = os.path.join(pool_path, "registry.db")
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        self.db = sqlite3.connect(path,
                                  isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self):
        self.db.close()

    # -- trust -------------------------------------------------------------------------
    def trust(self, scope, key):
        with transaction(self.db):
            self.db.execute("INSERT OR IGNORE INTO trust VALUES (?, ?)", (scope, key))

    def distrust(self, scope, key):
        with transaction(self.db):
            gone = self.db.execute("DELETE FROM trust WHERE scope = ? AND key = ?",
                                   (scope, key)).rowcount
        if not gone:
            raise NotFound(f"key {key[:16]}... is not trusted for {scope}")

    def trusted(self, bucket, key):
        """Is `key` trusted for `bucket` (for its team, or for it)?"""
        team = bucket.split("/")[0]
        return self.db.execute("SELECT 1 FROM trust WHERE key = ? AND scope IN (?, ?)",
                               (key, team, bucket)).fetchone() is not None

    def trust_list(self):
        return [{"scope": s, "key": k} for s, k in
                self.db.execute("SELECT scope, key FROM trust ORDER BY scope, key")]

    # -- data keys of private buckets, once unwrapped ------------------------------------
    def data_key(self, bucket, generation):
        row = self.db.execute("SELECT key FROM data_keys WHERE bucket = ? AND generation = ?",
                              (bucket, generation)).fetchone()
        return bytes.fromhex(row[0]) if row else None

    def keep_data_key(self, bucket, generation, key):
        with transaction(self.db):
            self.db.execute("INSERT OR REPLACE INTO data_keys VALUES (?, ?, ?)",
                            (bucket, generation, key.hex()))

    def acl_serial(self, bucket):
        """The newest ACL serial of `bucket` this pool has seen (0: none)."""
        row = self.db.execute("SELECT serial FROM acl_serials WHERE bucket = ?",
                              (bucket,)).fetchone()
        return row[0] if row else 0

    def saw_acl(self, bucket, serial):
        if serial > self.acl_serial(bucket):
            with transaction(self.db):
                self.db.execute("INSERT OR REPLACE INTO acl_serials VALUES (?, ?)",
                                (bucket, serial))

    # -- subscriptions ---------------------------------------------------------------------
    def subscribe(self, bucket, remote_spec, local, clone, hydrate, now):
        with transaction(self.db):
            self.db.execute("INSERT INTO subscriptions (bucket, remote, local, clone, created, "
                            "hydrate) VALUES (?, ?, ?, ?, ?, ?)",
                            (bucket, json.dumps(remote_spec), local, int(clone), now,
                             int(hydrate)))

    def unsubscribe(self, bucket):
        with transaction(self.db):
            gone = self.db.execute("DELETE FROM subscriptions WHERE bucket = ?",
                                   (bucket,)).rowcount
        if not gone:
            raise NotFound(f"not subscribed to {bucket}")

    def subscription(self, bucket):
        row = self.db.execute(f"SELECT {', '.join(FIELDS)} FROM subscriptions WHERE bucket = ?",
                              (bucket,)).fetchone()
        if row is None:
            raise NotFound(f"not subscribed to {bucket}")
        return _subscription(row)

    def subscriptions(self):
        return [_subscription(row) for row in self.db.execute(
            f"SELECT {', '.join(FIELDS)} FROM subscriptions ORDER BY bucket")]

    def advance(self, bucket, version, digest):
        with transaction(self.db):
            self.db.execute("UPDATE subscriptions SET version = ?, digest = ? "
                            "WHERE bucket = ? AND version < ?", (version, digest, bucket, version))


def _subscription(row):
    sub = dict(zip(FIELDS, row))
    sub["remote"] = json.loads(sub["remote"])
    sub["clone"] = bool(sub["clone"])
    sub["hydrate"] = bool(sub["hydrate"])
    return sub
