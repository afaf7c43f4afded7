"""What a checkpoint declares about its network, parsed without executing anything.

DUSt3R/MASt3R checkpoints carry a constructor string (``args.model``), Pow3R checkpoints a
``definition`` string, Fast3R folders a ``config.json``. :func:`parse_constructor` turns such a
string into a :class:`ModelSpec` using :mod:`ast` with an allow-list of model names and literal
arguments only (numbers, strings, booleans, ``None``, ``inf``, tuples, lists, dicts).
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

#: Class names of the released networks, as written in their checkpoints.
MODEL_NAMES = ("AsymmetricCroCo3DStereo", "AsymmetricMASt3R", "Pow3R", "Fast3R")


class SpecError(ValueError):
    """A constructor string or config that is not a plain call of a known network."""


@dataclass(frozen=True)
class DPTWidths:
    """Channel widths of a DPT head (official values are the defaults).

    Attributes:
        feature_dim: Width of the fusion (``scratch``) features.
        last_dim: Width of the last hidden convolution of the output head.
        layer_dims: Widths of the four reassembled feature levels.
    """

    feature_dim: int = 256
    last_dim: int = 128
    layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)


@dataclass(frozen=True)
class ModelSpec:
    """A network's class name, its constructor keyword arguments and the DPT widths it uses."""

    name: str
    kwargs: Mapping[str, Any]
    dpt: DPTWidths = field(default_factory=DPTWidths)


#: The constructor arguments of Fast3R, as its ``config.json`` holds them.
FAST3R_CONFIG_KEYS = frozenset({"encoder_args", "decoder_args", "head_args"})


def fast3r_spec(config: Mapping[str, Any]) -> ModelSpec:
    """The :class:`ModelSpec` of Fast3R's ``config.json`` (its constructor arguments, as
    loaded by ``json``). Raises :class:`SpecError` when keys are missing."""
    missing = FAST3R_CONFIG_KEYS - set(config)
    if missing:
        raise SpecError(f"not a Fast3R config: missing {sorted(missing)}")
    return ModelSpec("Fast3R", dict(config))


def constructor_string(spec: ModelSpec) -> str:
    """``spec`` as the constructor string a checkpoint stores (``'Name(key=literal, ...)'``),
    which :func:`parse_constructor` reads back."""
    return f"{spec.name}(" + ", ".join(f"{k}={v!r}" for k, v in spec.kwargs.items()) + ")"


def _literal(node: ast.AST, source: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool,
                                                                   type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return math.inf if node.id == "inf" else math.nan
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, source)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e, source) for e in node.elts)
    if isinstance(node, ast.List):
        return [_literal(e, source) for e in node.elts]
    if isinstance(node, ast.Dict) and all(k is not None for k in node.keys):
        return {_literal(k, source): _literal(v, source) for k, v in zip(node.keys, node.values)}
    raise SpecError(f"argument {ast.get_source_segment(source, node)!r} is not a literal; "
                    "a checkpoint's constructor may only contain literal arguments")


def parse_constructor(source: str) -> ModelSpec:
    """Parse ``'Name(key=literal, ...)'`` for a known network name.

    Raises:
        SpecError: for anything other than a single call of an allow-listed class with literal
            keyword arguments (this is what keeps a tampered checkpoint from running code).
    """
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise SpecError(f"constructor string is not valid Python syntax: {exc.msg}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise SpecError(f"constructor string {source[:80]!r} is not a call of a model class")
    if call.func.id not in MODEL_NAMES:
        raise SpecError(f"unknown model class {call.func.id!r}; "
                        f"supported: {', '.join(MODEL_NAMES)}")
    if call.args:
        raise SpecError("positional constructor arguments are not supported")
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise SpecError("'**' arguments are not allowed in a constructor string")
        kwargs[kw.arg] = _literal(kw.value, source)
    return ModelSpec(call.func.id, kwargs)


_LAYER_RN = re.compile(r"(?:^|\.)dpt\.scratch\.layer([1-4])_rn\.weight$")


def dpt_widths_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> DPTWidths | None:
    """Read the DPT widths of the first DPT head found in ``shapes`` (key -> tensor shape).

    Uses ``dpt.scratch.layer{1..4}_rn.weight`` (feature_dim, layer_dim, 3, 3) and
    ``dpt.head.2.weight`` (last_dim, feature_dim / 2, 3, 3). Returns ``None`` without DPT heads.
    """
    prefix = None
    for key in shapes:
        m = _LAYER_RN.search(key)
        if m:
            prefix = key[: m.start() + (1 if m.group(0).startswith(".") else 0)]
            break
    if prefix is None:
        return None
    try:
        layers = [shapes[f"{prefix}dpt.scratch.layer{i}_rn.weight"] for i in range(1, 5)]
        last = shapes[f"{prefix}dpt.head.2.weight"]
    except KeyError as exc:
        raise SpecError(f"incomplete DPT head under {prefix!r}: missing {exc.args[0]}") from None
    return DPTWidths(feature_dim=int(layers[0][0]), last_dim=int(last[0]),
                     layer_dims=tuple(int(s[1]) for s in layers))  # type: ignore[arg-type]
