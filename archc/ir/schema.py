"""A JSON Schema of the spec format, derived from the IR models so it cannot drift: an
op's fields from its pydantic model, a combinator's mapping from its class
(``layer_schema``, given :class:`Parts`), the document's sections here."""

from __future__ import annotations

from typing import Any

from archc.ir.ops import COMBINATORS, OPS, SHORTHAND, SYSTEM_FIELDS, Expect, Node, Param, ZeroPad
from archc.ir.recipe import Training

REF = {
    "type": "string",
    "pattern": r"^\$([A-Za-z_][A-Za-z0-9_]*|\{.*\})$",
    "description": "a param or block argument ($name), or an expression over them and the repeat index (${...})",
}
PAIR = {
    "anyOf": [
        {"type": "integer", "minimum": 1},
        {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
    ]
}
NON_NEGATIVE = {"type": "integer", "minimum": 0}
MARGINS = {
    "anyOf": [
        NON_NEGATIVE,
        {"type": "array", "items": NON_NEGATIVE, "minItems": 2, "maxItems": 2},
        {"type": "array", "items": {"type": "array", "items": NON_NEGATIVE, "minItems": 2, "maxItems": 2}, "minItems": 2, "maxItems": 2},
    ],
    "description": "p, [height, width] or [[top, bottom], [left, right]]",
}
TENSOR = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$", "maxLength": 100}
TENSORS = {"anyOf": [TENSOR, {"type": "array", "items": TENSOR, "minItems": 1}], "description": "a tensor name or a list of them"}
META = {"name": {"type": "string", "minLength": 1}, "when": {"anyOf": [{"type": "boolean"}, REF]}, "from": TENSORS, "as": TENSORS}
LAYERS = {"type": "array", "items": {"$ref": "#/$defs/layer"}, "minItems": 1}


def _fields(cls) -> dict[str, Any]:
    schema = cls.model_json_schema()
    props = {}
    for name, prop in schema["properties"].items():
        if name in SYSTEM_FIELDS or name in META:
            continue
        prop = {k: v for k, v in prop.items() if k != "title"}
        if name in ("kernel", "stride", "pool", "dilation"):
            prop = PAIR
        if cls is ZeroPad and name == "padding":
            prop = MARGINS
        props[name] = {"anyOf": [prop, REF]}
    # no "required": a spec's `defaults:` section may supply any field
    return {"type": "object", "properties": {**props, **META}, "additionalProperties": False}


class Parts:
    """What a combinator's ``layer_schema`` builds with."""

    layers = LAYERS

    @staticmethod
    def written(schema: dict[str, Any]) -> dict[str, Any]:
        """A field's schema, or a $reference in its place."""
        return {"anyOf": [schema, REF]}

    @staticmethod
    def mapping(cls: type[Node], **properties: Any) -> dict[str, Any]:
        """The combinator's mapping of fields (and name, when); the fields its model
        requires are required."""
        required = [f for f, info in cls.model_fields.items() if info.is_required() and f not in Node.model_fields]
        return {"type": "object", "properties": {**properties, **META}, "required": required, "additionalProperties": False}


def _only(key: str, value: dict[str, Any]) -> dict[str, Any]:
    """A mapping with one key, ``key``, whose value is ``value``."""
    return {"type": "object", "properties": {key: value}, "required": [key], "additionalProperties": False}


def _op(op: str, cls) -> dict[str, Any]:
    options = [_fields(cls), {"type": "null"}]
    if SHORTHAND.get(op) == "reads":  # a merge: `concat: [a, b]`
        options.append({"type": "array", "items": TENSOR, "minItems": 2})
    elif op in SHORTHAND:
        options.append({"anyOf": [{"type": ["string", "number", "integer"]}, *([MARGINS] if op == "zero_pad" else [])]})
    return _only(op, {"anyOf": options})


def layer_schema() -> dict[str, Any]:
    """A layer: an op's name or mapping, a combinator's mapping, or a block call."""
    return {
        "anyOf": [
            {"type": "string", "description": "an op without fields, or a block without arguments"},
            *(_op(op, cls) for op, cls in OPS.items()),
            *(_only(name, cls.layer_schema(Parts)) for name, cls in COMBINATORS.items()),
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "propertyNames": {"not": {"enum": [*OPS, *COMBINATORS]}},
                "description": "a block call: {block_name: {argument: value}}",
            },
        ]
    }


def _untitled(schema: dict[str, Any], *drop: str) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in ("title", *drop)}


def _params() -> dict[str, Any]:
    declaration = {
        "type": "object",
        "properties": {k: _untitled(v) for k, v in Param.model_json_schema()["properties"].items()},
        "required": ["default"],
        "additionalProperties": False,
    }
    return {"type": "object", "additionalProperties": {"anyOf": [{"type": ["integer", "number", "boolean", "string"]}, declaration]}}


def _blocks() -> dict[str, Any]:
    block = {
        "type": "object",
        "required": ["body"],
        "additionalProperties": False,
        "properties": {
            "args": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "object"}]},
            "inputs": {"type": "array", "items": TENSOR, "minItems": 1, "description": "named tensor inputs"},
            "outputs": {"anyOf": [TENSOR, {"type": "array", "items": TENSOR, "minItems": 1}], "description": "the tensors it returns"},
            "body": LAYERS,
            "doc": {"type": "string"},
        },
    }
    return {"type": "object", "additionalProperties": block}


def _outputs() -> dict[str, Any]:
    switched = {"type": "object", "properties": {"from": TENSOR, "when": META["when"]}, "required": ["from"], "additionalProperties": False}
    return {
        "anyOf": [
            {"type": "array", "items": TENSOR, "minItems": 1},
            {"type": "object", "additionalProperties": {"anyOf": [TENSOR, switched]}},
        ],
        "description": "tensor names, or output names -> tensor names (or {from: tensor, when: ...})",
    }


def _flows() -> dict[str, Any]:
    repeated = {
        "type": "object",
        "properties": {"repeat": {"anyOf": [{"type": "integer", "minimum": 1}, REF]}, "body": LAYERS},
        "required": ["repeat", "body"],
        "additionalProperties": False,
    }
    return {"type": "object", "minProperties": 1, "additionalProperties": {"anyOf": [LAYERS, repeated]}}


def spec_schema() -> dict[str, Any]:
    training = Training.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "archc spec",
        "type": "object",
        "required": ["name", "input", "flows"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "input": {
                "type": "array",
                "items": {"anyOf": [{"type": "integer", "minimum": 1}, REF]},
                "minItems": 3,
                "maxItems": 3,
                "description": "[height, width, channels]",
            },
            "params": _params(),
            "defaults": {"type": "object", "properties": {op: {"type": "object"} for op in OPS}, "additionalProperties": False},
            "blocks": _blocks(),
            "flows": _flows(),
            "outputs": _outputs(),
            "expect": _untitled(Expect.model_json_schema()),
            "training": _untitled(training, "$defs"),
        },
        "$defs": {"layer": layer_schema(), **training["$defs"]},
    }
