"""Our own manipulation tasks, built from primitive geoms (no downloaded assets)."""
