"""Humanoid locomotion: Playground's G1/T1 joystick tasks (loaded through ``envs.make``)."""
