"""The registry: buckets of immutable, signed versions of snapshots on a
remote, published by one pool and followed by others (docs/registry.md).

- documents.py: the signed documents (versions, heads) as bytes, checked;
- keys.py: a pool's signing and reader keys;
- bucket.py: buckets on an object store: versions, heads, the publisher
  lock, subscriber leases, what gc must keep;
- crypto.py: private buckets: wrapped data keys, the encrypted store;
- policy.py: the S3 bucket policy of a bucket (a template);
- state.py: what a pool keeps (trusted keys, subscriptions, data keys,
  ACL serials) in registry.db;
- service.py: publish and sync at work, over Control's helpers.

Nothing here imports the engine: the Control verbs (rokfs/control.py) are
the only door to the pool.
"""
