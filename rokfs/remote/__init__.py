"""Remote snapshots: push a snapshot to a chunk store, pull one back lazily.

- objects.py: object stores (a directory, S3) behind one small interface;
- chunks.py: the chunk store on top (packs, segments, manifests, GC);
- store.py: `RemoteStore`, the async face the Control verbs call;
- push.py: one push job; state.py: what this pool knows of its remotes.
"""

import os

from .objects import DirStore, S3Store, is_temp_failure, retry
from .store import READAHEAD, RemoteStore, open_remote


def default_remote_spec(pool_path):
    return {"type": "dir", "path": os.path.join(os.path.dirname(os.path.abspath(pool_path)),
                                                "remote")}


__all__ = ["open_remote", "RemoteStore", "DirStore", "S3Store", "retry", "is_temp_failure",
           "default_remote_spec", "READAHEAD"]
