"""On-device data: transitions, replay buffer, running normalisers."""
