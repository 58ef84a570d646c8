"""jaxrl.algos."""
