"""OmniReset: reset-state datasets and the reset-mixture wrapper."""
