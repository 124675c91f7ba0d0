"""A JSON Schema of the spec format, derived from the IR models so it cannot drift."""

from __future__ import annotations

from typing import Any

from archc.ir.ops import COMBINATORS, OPS, SHORTHAND, SYSTEM_FIELDS, Expect, Param, ZeroPad
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
META = {"name": {"type": "string", "minLength": 1}, "when": {"anyOf": [{"type": "boolean"}, REF]}}
LAYERS = {"type": "array", "items": {"$ref": "#/$defs/layer"}, "minItems": 1}


def _fields(cls) -> dict[str, Any]:
    schema = cls.model_json_schema()
    props = {}
    for name, prop in schema["properties"].items():
        if name in SYSTEM_FIELDS or name in META:
            continue
        prop = {k: v for k, v in prop.items() if k != "title"}
        if name in ("kernel", "stride", "pool"):
            prop = PAIR
        if cls is ZeroPad and name == "padding":
            prop = MARGINS
        props[name] = {"anyOf": [prop, REF]}
    # no "required": a spec's `defaults:` section may supply any field
    return {"type": "object", "properties": {**props, **META}, "additionalProperties": False}


def spec_schema() -> dict[str, Any]:
    ops = {}
    for op, cls in OPS.items():
        body = _fields(cls)
        options = [body, {"type": "null"}]
        if op in SHORTHAND:
            options.append({"anyOf": [{"type": ["string", "number", "integer"]}, *([MARGINS] if op == "zero_pad" else [])]})
        ops[op] = {"type": "object", "properties": {op: {"anyOf": options}}, "required": [op], "additionalProperties": False}
    combinators = {
        "residual": {
            "type": "object",
            "properties": {"body": LAYERS, "shortcut": LAYERS, "use_shortcut": {"anyOf": [{"type": "boolean"}, REF]}, **META},
            "required": ["body"],
            "additionalProperties": False,
        },
        "gate": {
            "anyOf": [
                LAYERS,
                {"type": "object", "properties": {"body": LAYERS, **META}, "required": ["body"], "additionalProperties": False},
            ]
        },
        "branches": {
            "anyOf": [
                {"type": "array", "items": LAYERS, "minItems": 2},
                {"type": "object", "additionalProperties": LAYERS, "minProperties": 2},
                {"type": "object", "properties": {"paths": {}, **META}, "required": ["paths"], "additionalProperties": False},
            ]
        },
        "repeat": {
            "type": "object",
            "properties": {"times": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 10000}, REF]}, "body": LAYERS, **META},
            "required": ["times", "body"],
            "additionalProperties": False,
        },
    }
    assert set(combinators) == set(COMBINATORS)
    layer = {
        "anyOf": [
            {"type": "string", "description": "an op without fields, or a block without arguments"},
            *ops.values(),
            *({"type": "object", "properties": {k: v}, "required": [k], "additionalProperties": False} for k, v in combinators.items()),
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "propertyNames": {"not": {"enum": [*OPS, *COMBINATORS]}},
                "description": "a block call: {block_name: {argument: value}}",
            },
        ]
    }
    param = Param.model_json_schema()
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
            "params": {
                "type": "object",
                "additionalProperties": {
                    "anyOf": [
                        {"type": ["integer", "number", "boolean", "string"]},
                        {
                            "type": "object",
                            "properties": {k: {kk: vv for kk, vv in v.items() if kk != "title"} for k, v in param["properties"].items()},
                            "required": ["default"],
                            "additionalProperties": False,
                        },
                    ]
                },
            },
            "defaults": {"type": "object", "properties": {op: {"type": "object"} for op in OPS}, "additionalProperties": False},
            "blocks": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["body"],
                    "additionalProperties": False,
                    "properties": {
                        "args": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "object"}]},
                        "body": LAYERS,
                        "doc": {"type": "string"},
                    },
                },
            },
            "flows": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {
                    "anyOf": [
                        LAYERS,
                        {
                            "type": "object",
                            "properties": {"repeat": {"anyOf": [{"type": "integer", "minimum": 1}, REF]}, "body": LAYERS},
                            "required": ["repeat", "body"],
                            "additionalProperties": False,
                        },
                    ]
                },
            },
            "expect": {k: v for k, v in Expect.model_json_schema().items() if k != "title"},
            "training": {k: v for k, v in training.items() if k not in ("title", "$defs")},
        },
        "$defs": {"layer": layer, **training["$defs"]},
    }
