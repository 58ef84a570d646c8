"""Run an exported policy with numpy alone (copy this file to the robot; it imports no jax).

A policy is a list of ops applied in order to x = observation [B, D] float32; see
``jaxrl.io.export`` for the op list.  ``load_npz`` reads what ``export.save_npz`` writes.
"""

from __future__ import annotations

import numpy as np


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), as float32: what ``astype(bfloat16)`` gives
    in JAX, written with integer arithmetic (numpy has no bfloat16).  NaN stays NaN."""
    x = np.asarray(x, np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return np.where(np.isnan(x), x, u.astype(np.uint32).view(np.float32))


class _Params:
    """``p("scale")``: a layer's field as float32 (layers may hold float64 or lists)."""

    def __init__(self, layer: dict):
        self.layer = layer

    def __call__(self, field: str) -> np.ndarray:
        return np.asarray(self.layer[field], np.float32)


def forward(layers: list[dict], obs: np.ndarray) -> np.ndarray:
    """Deterministic action [B, A] for observations [B, D] (or [D] -> [A])."""
    x = np.asarray(obs, np.float32)
    squeeze, x = x.ndim == 1, np.atleast_2d(x)
    stack = []
    for i, layer in enumerate(layers):
        op, p = layer["op"], _Params(layer)
        if op == "affine":
            x = x * p("scale") + p("shift")
        elif op == "dense":
            x = x @ p("kernel") + (0.0 if layer.get("bias") is None else p("bias"))
        elif op == "relu":
            x = np.maximum(x, 0.0)
        elif op == "elu":
            x = np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))
        elif op == "swish":
            x = x * 0.5 * (1.0 + np.tanh(0.5 * x))  # x * sigmoid(x), no overflow
        elif op == "tanh":
            x = np.tanh(x)
        elif op == "rmsnorm":
            x = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + p("eps")) * p("scale")
        elif op == "push":
            stack.append(x)
        elif op == "add_pop":
            x = x + stack.pop()
        elif op == "slice":
            x = x[..., int(layer["start"]) : int(layer["stop"])]
        elif op == "clip":
            x = np.clip(x, p("low"), p("high"))
        elif op == "round_bf16":
            x = round_bf16(x)
        else:
            raise ValueError(f"layer {i}: unknown op {op!r}")
        x = x.astype(np.float32, copy=False)
    return x[0] if squeeze else x


def load_npz(path) -> list[dict]:
    """Layers from a file written by ``jaxrl.io.export.save_npz``."""
    with np.load(path, allow_pickle=False) as f:
        layers = [{} for _ in range(int(f["num_layers"]))]
        for name in f.files:
            if name.startswith("layer"):
                index, field = name[len("layer") :].split(".", 1)
                value = f[name]
                if value.ndim == 0:  # op names and scalar attributes (eps, start, low, ...)
                    value = value.item()
                layers[int(index)][field] = value
    return layers
