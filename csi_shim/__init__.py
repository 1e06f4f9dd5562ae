"""rokfs CSI driver: Identity, Controller and Node services over the daemon's
control API (see docs/csi.md). Entry point: `rokfs-csi` (csi_shim.server)."""
