"""Policy export: one self-contained file (ONNX or npz) plus a JSON policy card.

Each algorithm describes its deterministic policy as a list of *export ops*
(``policy_layers(state, cfg) -> list[dict]``), with the observation normaliser and the action
squashing folded in.  They are applied in order to x = observation [B, D] float32:

    {"op": "affine", "scale": [D], "shift": [D]}          x = x * scale + shift
    {"op": "dense", "kernel": [in, out], "bias": [out] | None}
    {"op": "relu"} | {"op": "elu"} | {"op": "swish"} | {"op": "tanh"}
    {"op": "rmsnorm", "scale": [D], "eps": float}         x = x / sqrt(mean(x^2, -1) + eps) * scale
    {"op": "push"}                                        save a copy of x on a stack
    {"op": "add_pop"}                                     x = x + stack.pop()   (residual)
    {"op": "slice", "start": int, "stop": int}            along the last axis
    {"op": "clip", "low": float, "high": float}
    {"op": "round_bf16"}                                  x = x rounded to the nearest bfloat16
                                                          (observations a policy learned as its
                                                          replay stored them: bfloat16)

The same list runs in jax (``to_jax``), numpy (``jaxrl.io.numpy_policy.forward``) and onnxruntime
(``to_onnx``); the tests hold the three equal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxrl.io.checkpoint import file_sha256
from jaxrl.io.numpy_policy import forward as numpy_forward  # noqa: F401  (re-exported)
from jaxrl.io.numpy_policy import load_npz  # noqa: F401  (re-exported)

# One identity per run: the card's config_sha256 is the hash its checkpoints carry.
from jaxrl.io.runfolder import _jsonable, config_hash, write_text_atomic

CARD_FORMAT_VERSION = 1
OPS = (
    "affine",
    "dense",
    "relu",
    "elu",
    "swish",
    "tanh",
    "rmsnorm",
    "push",
    "add_pop",
    "slice",
    "clip",
    "round_bf16",
)
_ARRAY_FIELDS = {"affine": ("scale", "shift"), "dense": ("kernel", "bias"), "rmsnorm": ("scale",)}


# --------------------------------------------------------------------------- checking


def _vector(i: int, layer: dict, field: str, dim: int) -> None:
    shape = np.shape(layer.get(field))
    if shape != (dim,):
        raise ValueError(
            f"layer {i} ({layer['op']}): {field} has shape {shape}, the input to this layer has "
            f"{dim} features"
        )


def check_layers(layers: Sequence[Mapping], obs_dim: int) -> int:
    """Check ops and shapes for an input of ``obs_dim`` features; return the action size.

    Raises ValueError naming the layer index for an unknown op or mismatched shapes.
    """
    dim, stack = int(obs_dim), []
    for i, layer in enumerate(layers):
        op = layer.get("op")
        if op not in OPS:
            raise ValueError(f"layer {i}: unknown op {op!r}; known ops: {', '.join(OPS)}")
        if op in ("affine", "rmsnorm"):
            for field in _ARRAY_FIELDS[op]:
                _vector(i, layer, field, dim)
        elif op == "dense":
            kernel = np.shape(layer.get("kernel"))
            if len(kernel) != 2 or kernel[0] != dim:
                raise ValueError(
                    f"layer {i} (dense): kernel has shape {kernel}, expected ({dim}, out) "
                    f"because the previous layer gives {dim} features"
                )
            dim = kernel[1]
            if layer.get("bias") is not None:
                _vector(i, layer, "bias", dim)
        elif op == "push":
            stack.append(dim)
        elif op == "add_pop":
            if not stack:
                raise ValueError(f"layer {i} (add_pop): no matching push before it")
            pushed = stack.pop()
            if pushed != dim:
                raise ValueError(
                    f"layer {i} (add_pop): adds {pushed} pushed features to {dim} features"
                )
        elif op == "slice":
            start, stop = int(layer["start"]), int(layer["stop"])
            if not 0 <= start < stop <= dim:
                raise ValueError(f"layer {i} (slice): [{start}:{stop}] is not inside 0..{dim}")
            dim = stop - start
        elif op == "clip" and not float(layer["low"]) <= float(layer["high"]):
            raise ValueError(f"layer {i} (clip): low {layer['low']} > high {layer['high']}")
    if stack:
        raise ValueError(f"{len(stack)} push op(s) without a matching add_pop")
    return dim


def input_dim(layers: Sequence[Mapping]) -> int:
    """The observation size implied by the first layer that has weights."""
    for layer in layers:
        if layer.get("op") in ("affine", "rmsnorm"):
            return int(np.shape(layer["scale"])[0])
        if layer.get("op") == "dense":
            return int(np.shape(layer["kernel"])[0])
    raise ValueError("cannot infer the observation size: no layer with weights; pass obs_dim")


def as_numpy(layers: Sequence[Mapping]) -> list[dict]:
    """A copy with every array field as float32 numpy (jax arrays are fetched from device)."""
    out = []
    for layer in layers:
        layer = dict(layer)
        for field in _ARRAY_FIELDS.get(layer.get("op"), ()):
            if layer.get(field) is not None:
                layer[field] = np.asarray(layer[field], np.float32)
        out.append(layer)
    return out


# --------------------------------------------------------------------------- jax


def to_jax(layers: Sequence[Mapping]) -> Callable:
    """A jitted ``fn(obs [B, D]) -> action [B, A]`` in jax.numpy."""
    import jax
    import jax.numpy as jnp

    layers = as_numpy(layers)
    check_layers(layers, input_dim(layers))

    def policy(obs):
        x, stack = jnp.asarray(obs, jnp.float32), []
        for layer in layers:
            op = layer["op"]
            if op == "affine":
                x = x * layer["scale"] + layer["shift"]
            elif op == "dense":
                x = x @ layer["kernel"]
                if layer.get("bias") is not None:
                    x = x + layer["bias"]
            elif op in ("relu", "elu", "tanh"):
                x = getattr(jax.nn, op)(x) if op != "tanh" else jnp.tanh(x)
            elif op == "swish":
                x = x * jax.nn.sigmoid(x)
            elif op == "rmsnorm":
                x = x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + layer["eps"]) * layer["scale"]
            elif op == "push":
                stack.append(x)
            elif op == "add_pop":
                x = x + stack.pop()
            elif op == "slice":
                x = x[..., int(layer["start"]) : int(layer["stop"])]
            elif op == "clip":
                x = jnp.clip(x, layer["low"], layer["high"])
            elif op == "round_bf16":
                x = x.astype(jnp.bfloat16).astype(jnp.float32)
        return x

    return jax.jit(policy)


# --------------------------------------------------------------------------- npz


def save_npz(layers: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Write layers to ``path`` (read back with ``numpy_policy.load_npz``, no pickle)."""
    layers = as_numpy(layers)
    check_layers(layers, input_dim(layers))
    arrays: dict[str, np.ndarray] = {"num_layers": np.asarray(len(layers))}
    for i, layer in enumerate(layers):
        for field, value in layer.items():
            if value is not None:
                arrays[f"layer{i:03d}.{field}"] = np.asarray(value)
    path = Path(path)
    with open(path, "wb") as f:  # an open file: np.savez would append .npz to other suffixes
        np.savez(f, **arrays)
    return path


# --------------------------------------------------------------------------- onnx


class _Graph:
    """Accumulates onnx nodes and initializers with fresh names."""

    def __init__(self):
        self.nodes, self.initializers, self._n = [], [], 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        from onnx import helper

        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def to_onnx(layers: Sequence[Mapping], obs_dim: int, path: str | os.PathLike, opset: int = 17):
    """Write an ONNX model: input ``obs`` [batch, obs_dim] float32 -> output ``action``.

    Built node by node with ``onnx.helper``; runs with onnxruntime alone.  Returns the ModelProto.
    """
    import onnx
    from onnx import TensorProto, helper

    if not 13 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset {opset} not supported (13..{onnx.defs.onnx_opset_version()})")
    layers = as_numpy(layers)
    action_dim = check_layers(layers, obs_dim)
    g, x, stack = _Graph(), "obs", []
    for i, layer in enumerate(layers):
        op, tag = layer["op"], f"l{i}_{layer['op']}"
        if op == "affine":
            x = g.node("Mul", [x, g.const(layer["scale"], tag + "_scale")], tag)
            x = g.node("Add", [x, g.const(layer["shift"], tag + "_shift")], tag)
        elif op == "dense":
            x = g.node("MatMul", [x, g.const(layer["kernel"], tag + "_kernel")], tag)
            if layer.get("bias") is not None:
                x = g.node("Add", [x, g.const(layer["bias"], tag + "_bias")], tag)
        elif op in ("relu", "elu", "tanh"):
            x = g.node({"relu": "Relu", "elu": "Elu", "tanh": "Tanh"}[op], [x], tag)
        elif op == "swish":
            x = g.node("Mul", [x, g.node("Sigmoid", [x], tag)], tag)
        elif op == "rmsnorm":
            square = g.node("Mul", [x, x], tag)
            if opset >= 18:  # axes moved from attribute to input
                axes = g.const(np.array([-1], np.int64), tag + "_axes")
                mean = g.node("ReduceMean", [square, axes], tag, keepdims=1)
            else:
                mean = g.node("ReduceMean", [square], tag, axes=[-1], keepdims=1)
            eps = g.const(np.array(layer["eps"], np.float32), tag + "_eps")
            rms = g.node("Sqrt", [g.node("Add", [mean, eps], tag)], tag)
            x = g.node(
                "Mul", [g.node("Div", [x, rms], tag), g.const(layer["scale"], tag + "_scale")], tag
            )
        elif op == "push":
            stack.append(x)
        elif op == "add_pop":
            x = g.node("Add", [x, stack.pop()], tag)
        elif op == "slice":
            bounds = [np.array([v], np.int64) for v in (layer["start"], layer["stop"], -1)]
            names = [g.const(b, f"{tag}_{n}") for b, n in zip(bounds, ("start", "stop", "axis"))]
            x = g.node("Slice", [x, *names], tag)
        elif op == "clip":
            low = g.const(np.array(layer["low"], np.float32), tag + "_low")
            high = g.const(np.array(layer["high"], np.float32), tag + "_high")
            x = g.node("Clip", [x, low, high], tag)
        elif op == "round_bf16":  # (onnxruntime rounds to nearest, ties to even, as numpy and JAX)
            x = g.node("Cast", [g.node("Cast", [x], tag, to=TensorProto.BFLOAT16)], tag, to=TensorProto.FLOAT)
    g.nodes.append(helper.make_node("Identity", [x], ["action"], name="action"))
    graph = helper.make_graph(
        g.nodes,
        "jaxrl_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", int(obs_dim)])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", int(action_dim)])],
        initializer=g.initializers,
    )
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opset_ids, producer_name="jaxrl")
    model.ir_version = helper.find_min_ir_version_for(opset_ids)  # older runtimes load it too
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


# --------------------------------------------------------------------------- policy card


def _floats(values: Any, n: int, what: str) -> list[float]:
    arr = np.asarray(values, np.float64)
    arr = np.full(n, arr) if arr.ndim == 0 else arr
    if arr.shape != (n,):
        raise ValueError(f"{what} has {arr.shape} entries, there are {n} actions")
    return arr.tolist()


def make_card(
    *,
    obs_layout: Mapping[str, int] | Sequence[tuple[str, int]],
    action_names: Sequence[str],
    control_dt: float,
    config: Any,
    action_scale: float | Sequence[float] = 1.0,
    action_offset: float | Sequence[float] = 0.0,
    default_joint_pos: Sequence[float] | None = None,
    kp: float | Sequence[float] | None = None,
    kd: float | Sequence[float] | None = None,
    env: str | None = None,
    algo: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The JSON policy card a robot-side runtime needs besides the network.

    Args:
      obs_layout: ordered ``name -> size`` of the observation blocks the policy expects.
      action_names: actuator names in the policy's output order.
      control_dt: seconds between two policy calls.
      config: the training config (dict or dataclass); only its SHA-256 goes into the card.
      action_scale, action_offset: joint target = offset + scale * action (scalar or per action).
      default_joint_pos: the default pose (per action), when the robot needs one.
      kp, kd: PD gains (scalar or per action), when the policy was trained with them.
    """
    items = list(obs_layout.items()) if isinstance(obs_layout, Mapping) else list(obs_layout)
    layout, start = [], 0
    for name, size in items:
        layout.append({"name": str(name), "start": start, "size": int(size)})
        start += int(size)
    n = len(action_names)
    card = {
        "format_version": CARD_FORMAT_VERSION,
        "env": env,
        "algo": algo,
        "observation": {"size": start, "layout": layout, "dtype": "float32"},
        "action": {
            "size": n,
            "names": [str(a) for a in action_names],
            "scale": _floats(action_scale, n, "action_scale"),
            "offset": _floats(action_offset, n, "action_offset"),
        },
        "default_joint_positions": (
            None
            if default_joint_pos is None
            else _floats(default_joint_pos, n, "default_joint_pos")
        ),
        "control_dt": float(control_dt),
        "control_hz": 1.0 / float(control_dt),
        "config_sha256": config_hash(config),
    }
    if kp is not None or kd is not None:
        card["pd_gains"] = {
            "kp": None if kp is None else _floats(kp, n, "kp"),
            "kd": None if kd is None else _floats(kd, n, "kd"),
        }
    if extra:
        card.update(json.loads(json.dumps(dict(extra), default=_jsonable)))
    return card


REQUIRED_CARD_FIELDS = ("format_version", "observation", "action", "control_dt", "config_sha256")


def write_card(path: str | os.PathLike, card: Mapping[str, Any]) -> Path:
    """Write ``card`` as strict JSON (no NaN) after checking its required fields."""
    missing = [k for k in REQUIRED_CARD_FIELDS if k not in card]
    if missing:
        raise ValueError(f"policy card lacks {missing}; build it with make_card(...)")
    path = Path(path)
    write_text_atomic(path, json.dumps(dict(card), indent=2, allow_nan=False, default=_jsonable) + "\n")
    return path


def export_policy(
    layers: Sequence[Mapping],
    out_path: str | os.PathLike,
    format: str | None = None,
    *,
    card: Mapping[str, Any],
    opset: int = 17,
) -> tuple[Path, Path]:
    """Write the policy (``format`` 'onnx' or 'npz', default from the suffix) and its card.

    The card goes to ``<out_path>.card.json`` (e.g. ``policy.onnx.card.json``), with the policy
    file's name, format, SHA-256 and tensor names added.  Returns ``(policy_path, card_path)``.
    """
    out_path = Path(out_path)
    format = policy_format(out_path, format)
    obs_dim = int(card["observation"]["size"])
    action_dim = check_layers(as_numpy(layers), obs_dim)
    if action_dim != int(card["action"]["size"]):
        raise ValueError(
            f"the policy outputs {action_dim} actions, the card names {card['action']['size']}"
        )
    # Each file whole or not at all: the policy written beside its place, the card (naming the
    # new file's SHA-256) put in place, then the policy.  A kill between the two leaves a card
    # that does not describe the file there, which `sim2sim` checks before trusting the pair.
    tmp = out_path.with_name(out_path.name + ".tmp")
    if format == "onnx":
        to_onnx(layers, obs_dim, tmp, opset=opset)
    else:
        save_npz(layers, tmp)
    card = dict(card)
    card["policy"] = {
        "file": out_path.name,
        "format": format,
        "sha256": file_sha256(tmp),
        "input": "obs",
        "output": "action",
        "opset": opset if format == "onnx" else None,
    }
    card_path = write_card(card_path_of(out_path), card)
    os.replace(tmp, out_path)
    return out_path, card_path


FORMATS = ("onnx", "npz")


def policy_format(out_path: str | os.PathLike, format: str | None = None, default: str | None = None) -> str:
    """The format a policy file is written in: ``format``, else the file's suffix (.onnx / .npz),
    else ``default``.  A suffix naming the other format is refused: the file would not load."""
    suffix = Path(out_path).suffix.lstrip(".").lower()
    chosen = format or (suffix if suffix in FORMATS else default)
    if chosen not in FORMATS:
        raise ValueError(f"format must be 'onnx' or 'npz', got {chosen!r}")
    if suffix in FORMATS and suffix != chosen:
        raise ValueError(f"{str(out_path)!r} names a .{suffix} file but format={chosen!r}: name it "
                         f"*.{chosen} or leave the format out (it follows the suffix)")
    return chosen


def card_path_of(policy_path: str | os.PathLike) -> Path:
    """Where a policy file's card lives: ``<policy_path>.card.json``."""
    return Path(f"{policy_path}.card.json")


def read_card(policy_path: str | os.PathLike) -> dict | None:
    """The card of an exported policy file; None when it has none."""
    path = card_path_of(policy_path)
    return json.loads(path.read_text()) if path.exists() else None
