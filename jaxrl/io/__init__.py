"""jaxrl.io."""
