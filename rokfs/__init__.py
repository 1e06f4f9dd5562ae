"""rokfs: copy-on-write block volumes with instant snapshots."""

__version__ = "0.1.0"
