"""Resolve a loaded spec into the IR: the document's sections (name, input, params,
defaults, blocks, flows, expect, training) here; a layer -> its node in
archc/ir/layers.py (a combinator's mapping on its class in archc/ir/ops.py); ``$name``
and ``${...}`` values in archc/ir/substitute.py; pydantic's errors as located lines in
archc/ir/validate.py. Every node is named and validated with its pydantic model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from archc.ir import ops as ir
from archc.ir import params as params_mod
from archc.ir.layers import Layers, Written
from archc.ir.ops import COMBINATORS, OPS, BlockDef, Expect, Network, Node, Repeat
from archc.ir.recipe import Training
from archc.ir.substitute import Scope
from archc.ir.validate import validated
from archc.syntax.errors import show
from archc.syntax.loader import Source, load_file

TOP_KEYS = ("name", "description", "input", "params", "defaults", "blocks", "flows", "outputs", "expect", "training")
LAYER_META = ("name", "when", "from", "as")
RESERVED = set(OPS) | set(COMBINATORS) | {"call"}


def compile_spec(spec: str | Source, overrides: Mapping[str, Any] | None = None) -> Network:
    """Load (if given a path) and resolve a spec into a validated :class:`Network`."""
    source = spec if isinstance(spec, Source) else load_file(spec)
    return Resolver(source).network(overrides)


class Resolver(Layers):
    """One spec's document -> its Network (the layers' part is inherited)."""

    def __init__(self, source: Source):
        super().__init__(source)
        self.doc = source.data

    def network(self, overrides: Mapping[str, Any] | None) -> Network:
        doc = self.doc
        self.check_document(doc)
        decls = params_mod.declare(self.source, doc.get("params"))
        values = self.params = params_mod.resolve(self.source, decls, overrides)
        inp, input_refs = self.read_input(doc["input"], values)
        self.defaults = self.read_defaults(doc.get("defaults"))
        self.blocks = self.read_blocks(doc.get("blocks"))
        flows = self.read_flows(doc["flows"], values)
        expect = None if "expect" not in doc else validated(self.source, Expect, doc["expect"], ("expect",))
        outputs, output_keys, switches = self.read_outputs(doc.get("outputs"), values)
        return Network(
            name=doc["name"],
            file=self.source.file,
            description=str(doc.get("description") or ""),
            input=tuple(inp),
            input_refs=input_refs,
            params=values,
            param_decls=decls,
            blocks={
                name: BlockDef(args=args, doc=doc_, inputs=inputs, outputs=outs)
                for name, (args, _, doc_, inputs, outs) in self.blocks.items()
            },
            flows=flows,
            outputs=outputs,
            output_where={name: self.where(key, Scope(values, "outputs")) for name, key in output_keys.items()},
            output_when=switches,
            expect=expect,
            training=self.read_training(doc.get("training"), values),
        )

    def check_document(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            raise self.error((), f"expected a mapping at the top of the spec, found {show(doc)}")
        self.check_keys(doc, (), TOP_KEYS, "top-level key")
        for required in ("name", "input", "flows"):
            if required not in doc:
                raise self.error((), f"expected a top-level '{required}', found none")
        if not isinstance(doc["name"], str) or not doc["name"]:
            raise self.error(("name",), f"expected a non-empty text, found {show(doc['name'])}")

    def read_input(self, inp: Any, values: dict[str, Any]) -> tuple[list, dict[int, str]]:
        """[height, width, channels], each maybe a $reference, and their expressions."""
        input_refs = {}
        if isinstance(inp, list):
            resolved = [self.substitute(v, ("input", i), Scope(values, "input")) for i, v in enumerate(inp)]
            inp = [v for v, _ in resolved]
            input_refs = {i: ref for i, (_, ref) in enumerate(resolved) if ref}
        if not (isinstance(inp, list) and len(inp) == 3 and all(type(v) is int and 1 <= v <= 100_000 for v in inp)):
            raise self.error(("input",), f"expected [height, width, channels] as three positive integers, found {show(inp)}")
        return inp, input_refs

    def read_flows(self, raw: Any, values: dict[str, Any]) -> dict[str, list[Node]]:
        """Each flow a list of layers, or ``{repeat: n, body: [...]}`` (one repeat node)."""
        if not isinstance(raw, dict) or not raw:
            raise self.error(("flows",), f"expected a mapping of flow names to layer lists, found {show(raw)}")
        flows = {}
        for flow, layers in raw.items():
            key, scope = ("flows", flow), Scope(values, flow)
            if isinstance(layers, dict) and "repeat" in layers:
                self.check_keys(layers, key, ("repeat", "body"), "key of a repeated flow")
                common = {"name": "repeat", "path": f"{flow}/repeat", "where": self.where(key, scope)}
                fields = {"times": layers["repeat"], "body": layers.get("body")}
                flows[flow] = [Repeat.parse(Written("repeat", fields, key, scope, common, keys={"times": key + ("repeat",)}), self)]
            else:
                flows[flow] = self.sequence(layers, key, scope)
        return flows

    def read_training(self, raw: Any, values: dict[str, Any]) -> Training | None:
        if raw is None:
            return None
        training = validated(self.source, Training, raw, ("training",))
        if training.dropout is not None and "dropout" not in values:
            raise self.error(
                ("training", "dropout"), "expected a spec param 'dropout' for training.dropout to set, found none", at_key=True
            )
        return training

    def read_defaults(self, raw: Any) -> dict[str, dict[str, Any]]:
        raw = self.source.mapping(raw, ("defaults",), "op names to field defaults")
        self.check_keys(raw, ("defaults",), set(OPS), "op name")
        for op, fields in raw.items():
            if not isinstance(fields, dict):
                raise self.error(("defaults", op), f"expected a mapping of field defaults, found {show(fields)}")
        return raw

    def read_outputs(self, raw: Any, values: dict[str, Any]) -> tuple[dict[str, str], dict[str, tuple], dict[str, tuple[bool, str]]]:
        """``outputs:``: a list of tensor names, or a mapping of output names to tensor
        names or to ``{from: tensor, when: $param}`` (an output a param switches off);
        (output -> tensor, output -> where it is written, output -> (when, its expression))."""
        if raw is None:
            return {}, {}, {}
        pairs = [(name, name, ("outputs", i)) for i, name in enumerate(raw)] if isinstance(raw, list) else []
        pairs += [(name, tensor, ("outputs", name)) for name, tensor in raw.items()] if isinstance(raw, dict) else []
        if not pairs:
            raise self.error(("outputs",), f"expected a list of tensor names or a mapping of output names to them, found {show(raw)}")
        outputs, keys, switches = {}, {}, {}
        for name, tensor, key in pairs:
            if isinstance(tensor, dict) and isinstance(raw, dict):
                self.check_keys(tensor, key, ("from", "when"), "key of a switched output")
                if "from" not in tensor:
                    raise self.error(key, "expected 'from' (the tensor) and 'when', found no 'from'")
                when, ref = self.substitute(tensor.get("when", True), key + ("when",), Scope(values, "outputs"))
                if not isinstance(when, bool):
                    raise self.error(key + ("when",), f"expected true or false, found {show(when)}")
                switches[name] = (when, ref or "")
                key, tensor = key + ("from",), tensor["from"]
            for value in (name, tensor):
                if not (isinstance(value, str) and value.isidentifier()):
                    raise self.error(
                        key, f"expected a tensor name (an identifier), found {show(value)}", at_key=value is name and isinstance(raw, dict)
                    )
            if name in outputs:
                raise self.error(key, f"expected each output once, found '{name}' again")
            outputs[name], keys[name] = tensor, key
        if not any(when for when, _ in switches.values()) and len(switches) == len(outputs):
            raise self.error(("outputs",), "expected at least one output switched on, found every one switched off by its when:")
        return outputs, keys, switches

    def read_blocks(self, raw: Any) -> dict[str, tuple[dict[str, Any], list, str, tuple[str, ...], tuple[str, ...]]]:
        return {
            name: self.read_block(name, body) for name, body in self.source.mapping(raw, ("blocks",), "block names to definitions").items()
        }

    def read_block(self, name: str, body: Any) -> tuple[dict[str, Any], list, str, tuple[str, ...], tuple[str, ...]]:
        """(args with their defaults, None where required; the body as written; the doc;
        the names of its tensor inputs; the names of the tensors it returns, where several)."""
        key = ("blocks", name)
        if name in RESERVED or not name.isidentifier():
            raise self.error(key, f"expected a block name that is an identifier and not an op, found '{name}'", at_key=True)
        if not isinstance(body, dict):
            raise self.error(key, f"expected a mapping with 'body' (and 'args', 'doc'), found {show(body)}")
        self.check_keys(body, key, ("args", "inputs", "outputs", "body", "doc"), "block key")
        if "body" not in body:
            raise self.error(key, "expected a 'body' list of layers, found none")
        args = self.read_args(key + ("args",), body.get("args") or {})
        inputs = self.tensor_names(body.get("inputs"), key + ("inputs",), Scope(self.params, name))
        for tensor in inputs:
            if tensor in args or inputs.count(tensor) > 1:
                raise self.error(
                    key + ("inputs",), f"expected tensor input names that differ from each other and from the args, found '{tensor}' twice"
                )
        outputs = self.tensor_names(body.get("outputs"), key + ("outputs",), Scope(self.params, name))
        if len(set(outputs)) < len(outputs):
            raise self.error(key + ("outputs",), f"expected output names that differ from each other, found {', '.join(outputs)}")
        return args, body["body"], str(body.get("doc") or ""), inputs, outputs

    def read_args(self, key: tuple, args: Any) -> dict[str, Any]:
        if isinstance(args, list):
            if not all(isinstance(a, str) for a in args):
                raise self.error(key, f"expected a list of argument names, found {show(args)}")
            args = {a: None for a in args}
        if not isinstance(args, dict):
            raise self.error(key, f"expected a list of names or a mapping of names to defaults, found {show(args)}")
        for arg in args:
            if not arg.isidentifier() or arg in LAYER_META:
                raise self.error(
                    key + (arg,), f"expected an argument name that is an identifier other than name/when, found '{arg}'", at_key=True
                )
            try:
                ir.plain(args[arg])
            except ValueError:
                raise self.error(key + (arg,), f"expected {ir.PLAIN} as a default, found {show(args[arg])}") from None
        return args
