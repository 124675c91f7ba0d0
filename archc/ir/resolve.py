"""Resolve a loaded spec into the IR: substitute params and block arguments, expand
block calls, name every node, and validate each node with its pydantic model.

A field whose whole value is ``$name`` takes the value of a block argument or param of
that name (``$$`` escapes a literal ``$``); one written ``${...}`` takes the value of an
expression over them and the repeat index (archc/syntax/expr.py; nothing is run as Python). Each
such field keeps its expression in the node's ``refs``, so that backends can print it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, ValidationError

from archc.ir import ops as ir
from archc.ir import params as params_mod
from archc.ir.ops import (
    COMBINATORS,
    OPS,
    SHORTHAND,
    SHORTHAND_LISTS,
    SYSTEM_FIELDS,
    BlockDef,
    Branches,
    Call,
    Expect,
    Gate,
    Network,
    Node,
    Repeat,
    Residual,
    Where,
    walk,
)
from archc.ir.recipe import Training
from archc.syntax import expr
from archc.syntax.errors import Location, SpecError, did_you_mean, show
from archc.syntax.loader import Key, Source, load_file
from archc.syntax.loader import dotted as dotted_key

TOP_KEYS = ("name", "description", "input", "params", "defaults", "blocks", "flows", "expect", "training")
LAYER_META = ("name", "when")
RESERVED = set(OPS) | set(COMBINATORS) | {"call"}
INDEX = expr.INDEX
MAX_UNROLLED = 100_000  # layers resolved to check a repeat whose body reads its index


@dataclass(frozen=True)
class Scope:
    """What ``$name`` can mean at a point of the spec, and how we got there."""

    symbols: Mapping[str, Any]
    path: str  # the IR path of the enclosing node
    via: str = ""  # the call sites leading here, for messages
    stack: tuple[str, ...] = ()  # block names being expanded (recursion guard)
    in_repeat: bool = False  # whether INDEX names the index of an enclosing repeat

    def at(self, path: str) -> Scope:
        return replace(self, path=path)


def compile_spec(spec: str | Source, overrides: Mapping[str, Any] | None = None) -> Network:
    """Load (if given a path) and resolve a spec into a validated :class:`Network`."""
    source = spec if isinstance(spec, Source) else load_file(spec)
    return Resolver(source).network(overrides)


class Resolver:
    def __init__(self, source: Source):
        self.source = source
        self.doc = source.data
        self.index_reads = 0  # expressions that read the repeat index, so far

    def error(self, key: Key, message: str, *, at_key: bool = False, via: str = ""):
        err = self.source.error(key, message, at_key=at_key)
        if via:
            err.loc.path += f" (in {via})"
            err.args = (f"{err.loc}: {err.loc.path}: {message}",)
        return err

    # -- the document -------------------------------------------------------------------

    def network(self, overrides: Mapping[str, Any] | None) -> Network:
        doc = self.doc
        if not isinstance(doc, dict):
            raise self.error((), f"expected a mapping at the top of the spec, found {show(doc)}")
        self.check_keys(doc, (), TOP_KEYS, "top-level key")
        for required in ("name", "input", "flows"):
            if required not in doc:
                raise self.error((), f"expected a top-level '{required}', found none")
        if not isinstance(doc["name"], str) or not doc["name"]:
            raise self.error(("name",), f"expected a non-empty text, found {show(doc['name'])}")
        decls = params_mod.declare(self.source, doc.get("params"))
        values = self.params = params_mod.resolve(self.source, decls, overrides)
        inp, input_refs = doc["input"], {}
        if isinstance(inp, list):
            resolved = [self.substitute(v, ("input", i), Scope(values, "input")) for i, v in enumerate(inp)]
            inp = [v for v, _ in resolved]
            input_refs = {i: ref for i, (_, ref) in enumerate(resolved) if ref}
        if not (isinstance(inp, list) and len(inp) == 3 and all(type(v) is int and 1 <= v <= 100_000 for v in inp)):
            raise self.error(("input",), f"expected [height, width, channels] as three positive integers, found {show(inp)}")
        self.defaults = self.read_defaults(doc.get("defaults"))
        self.blocks = self.read_blocks(doc.get("blocks"))
        flows_raw = doc["flows"]
        if not isinstance(flows_raw, dict) or not flows_raw:
            raise self.error(("flows",), f"expected a mapping of flow names to layer lists, found {show(flows_raw)}")
        flows = {}
        for flow, raw in flows_raw.items():
            scope = Scope(values, flow)
            if isinstance(raw, dict) and "repeat" in raw:
                self.check_keys(raw, ("flows", flow), ("repeat", "body"), "key of a repeated flow")
                flows[flow] = [
                    self.repeat(
                        {"times": raw["repeat"], "body": raw.get("body")},
                        ("flows", flow),
                        "repeat",
                        scope,
                        key_of_times=("flows", flow, "repeat"),
                    )
                ]
            else:
                flows[flow] = self.sequence(raw, ("flows", flow), scope)
        expect = None
        if "expect" in doc:
            try:
                expect = Expect.model_validate(doc["expect"])
            except ValidationError as exc:
                raise self.validation_error(exc, ("expect",), {}, Expect) from None
        training = None
        if doc.get("training") is not None:
            try:
                training = Training.model_validate(doc["training"])
            except ValidationError as exc:
                raise self.validation_error(exc, ("training",), {}, Training) from None
            if training.dropout is not None and "dropout" not in values:
                raise self.error(
                    ("training", "dropout"), "expected a spec param 'dropout' for training.dropout to set, found none", at_key=True
                )
        return Network(
            name=doc["name"],
            file=self.source.file,
            description=str(doc.get("description") or ""),
            input=tuple(inp),
            input_refs=input_refs,
            params=values,
            param_decls=decls,
            blocks={name: BlockDef(args=args, doc=doc_) for name, (args, _, doc_) in self.blocks.items()},
            flows=flows,
            expect=expect,
            training=training,
        )

    def check_keys(self, mapping: dict, key: Key, allowed: tuple[str, ...] | set[str], what: str) -> None:
        for name in mapping:
            if name not in allowed:
                options = ", ".join(sorted(allowed))
                raise self.error(key + (name,), f"expected a {what} ({options}), found '{name}'{did_you_mean(name, allowed)}", at_key=True)

    def read_defaults(self, raw: Any) -> dict[str, dict[str, Any]]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.error(("defaults",), f"expected a mapping of op names to field defaults, found {show(raw)}")
        self.check_keys(raw, ("defaults",), set(OPS), "op name")
        for op, fields in raw.items():
            if not isinstance(fields, dict):
                raise self.error(("defaults", op), f"expected a mapping of field defaults, found {show(fields)}")
        return raw

    def read_blocks(self, raw: Any) -> dict[str, tuple[dict[str, Any], list, str]]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.error(("blocks",), f"expected a mapping of block names to definitions, found {show(raw)}")
        blocks = {}
        for name, body in raw.items():
            key = ("blocks", name)
            if name in RESERVED or not name.isidentifier():
                raise self.error(key, f"expected a block name that is an identifier and not an op, found '{name}'", at_key=True)
            if not isinstance(body, dict):
                raise self.error(key, f"expected a mapping with 'body' (and 'args', 'doc'), found {show(body)}")
            self.check_keys(body, key, ("args", "body", "doc"), "block key")
            if "body" not in body:
                raise self.error(key, "expected a 'body' list of layers, found none")
            args = body.get("args") or {}
            if isinstance(args, list):
                if not all(isinstance(a, str) for a in args):
                    raise self.error(key + ("args",), f"expected a list of argument names, found {show(args)}")
                args = {a: None for a in args}
            if not isinstance(args, dict):
                raise self.error(key + ("args",), f"expected a list of names or a mapping of names to defaults, found {show(args)}")
            for arg in args:
                if not arg.isidentifier() or arg in LAYER_META:
                    raise self.error(
                        key + ("args", arg),
                        f"expected an argument name that is an identifier other than name/when, found '{arg}'",
                        at_key=True,
                    )
                try:
                    ir.plain(args[arg])
                except ValueError:
                    raise self.error(key + ("args", arg), f"expected {ir.PLAIN} as a default, found {show(args[arg])}") from None
            blocks[name] = (args, body["body"], str(body.get("doc") or ""))
        return blocks

    # -- layers ---------------------------------------------------------------------------

    def sequence(self, raw: Any, key: Key, scope: Scope) -> list[Node]:
        if not isinstance(raw, list) or not raw:
            raise self.error(key, f"expected a non-empty list of layers, found {show(raw)}", via=scope.via)
        seen: dict[str, int] = {}
        counts: dict[str, int] = {}
        nodes = []
        for i, item in enumerate(raw):
            kind, fields, fkey = self.split(item, key + (i,), scope)
            counts[kind] = counts.get(kind, 0) + 1
            name = fields.pop("name", None)
            if name is None:
                name = f"{kind}{counts[kind]}"
            elif not isinstance(name, str) or not name:
                raise self.error(fkey + ("name",), f"expected a non-empty text name, found {show(name)}", via=scope.via)
            if name in seen:
                raise self.error(
                    fkey + ("name",),
                    f"expected unique layer names in a list, found '{name}' again (first at [{seen[name]}])",
                    via=scope.via,
                )
            seen[name] = i
            nodes.append(self.layer(kind, fields, fkey, name, scope))
        return nodes

    def split(self, item: Any, key: Key, scope: Scope) -> tuple[str, dict[str, Any], Key]:
        """A layer as written -> (kind, fields, key of the fields)."""
        if isinstance(item, str):
            kind, value, fkey = item, None, key
        elif isinstance(item, dict) and len(item) == 1:
            kind, value = next(iter(item.items()))
            fkey = key + (kind,)
        elif isinstance(item, dict):
            keys = ", ".join(item)
            raise self.error(key, f"expected one op per layer (put name/when inside the op's fields), found keys {keys}", via=scope.via)
        else:
            raise self.error(
                key, f"expected a layer (an op name, or a mapping of one op name to its fields), found {show(item)}", via=scope.via
            )
        known = set(OPS) | set(COMBINATORS) | set(self.blocks)
        if kind not in known:
            raise self.error(
                key + ((kind,) if isinstance(item, dict) else ()),
                f"expected an op or block name, found '{kind}'{did_you_mean(kind, known)}",
                at_key=isinstance(item, dict),
                via=scope.via,
            )
        if kind == "branches" and isinstance(value, (list, dict)) and not (isinstance(value, dict) and "paths" in value):
            value = {"paths": value}
        if kind == "gate" and isinstance(value, list):
            value = {"body": value}
        if value is None:
            fields: dict[str, Any] = {}
        elif isinstance(value, dict):
            fields = dict(value)
        elif kind in SHORTHAND and (not isinstance(value, list) or kind in SHORTHAND_LISTS):
            fields = {SHORTHAND[kind]: value}
        else:
            raise self.error(fkey, f"expected a mapping of fields for '{kind}', found {show(value)}", via=scope.via)
        return kind, fields, fkey

    def layer(self, kind: str, fields: dict[str, Any], key: Key, name: str, scope: Scope) -> Node:
        path = f"{scope.path}/{name}"
        where = self.where(key, scope)
        refs: dict[str, str] = {}
        when = True
        if "when" in fields:
            when, ref = self.substitute(fields.pop("when"), key + ("when",), scope)
            if ref:
                refs["when"] = ref
            if not isinstance(when, bool):
                raise self.error(key + ("when",), f"expected true or false, found {show(when)}", via=scope.via)
        common = {"name": name, "path": path, "when": when, "where": where}
        if kind in OPS:
            return self.op(kind, fields, key, common, refs, scope)
        if kind == "residual":
            self.check_keys(fields, key, ("body", "shortcut", "use_shortcut"), "residual key")
            use, ref = self.substitute(fields.get("use_shortcut", True), key + ("use_shortcut",), scope)
            if ref:
                refs["use_shortcut"] = ref
            body = self.sequence(fields.get("body"), key + ("body",), scope.at(path + "/body"))
            short = fields.get("shortcut")
            shortcut = [] if short is None else self.sequence(short, key + ("shortcut",), scope.at(path + "/shortcut"))
            return self.build(Residual, {**common, "refs": refs, "body": body, "shortcut": shortcut, "use_shortcut": use}, key, scope)
        if kind == "gate":
            self.check_keys(fields, key, ("body",), "gate key")
            body = self.sequence(fields.get("body"), key + ("body",), scope.at(path + "/body"))
            return self.build(Gate, {**common, "refs": refs, "body": body}, key, scope)
        if kind == "branches":
            self.check_keys(fields, key, ("paths",), "branches key")
            raw = fields.get("paths")
            if isinstance(raw, list):
                raw = {f"branch{i + 1}": layers for i, layers in enumerate(raw)}
                keys = {name: i for i, name in enumerate(raw)}
            else:
                keys = {name: name for name in raw or ()}
            if not isinstance(raw, dict) or len(raw) < 2:
                message = "expected at least two paths (a list of layer lists, or a mapping of names to them)"
                raise self.error(key, f"{message}, found {show(fields.get('paths'))}", via=scope.via)
            paths = {p: self.sequence(layers, key + ("paths", keys[p]), scope.at(f"{path}/{p}")) for p, layers in raw.items()}
            return self.build(Branches, {**common, "refs": refs, "paths": paths}, key, scope)
        if kind == "repeat":
            self.check_keys(fields, key, ("times", "body"), "repeat key")
            return self.repeat(fields, key, name, scope, key_of_times=key + ("times",), common=common, refs=refs)
        return self.call(kind, fields, key, common, refs, scope)

    def repeat(self, fields, key, name, scope, *, key_of_times, common=None, refs=None) -> Repeat:
        path = f"{scope.path}/{name}"
        common = common or {"name": name, "path": path, "where": self.where(key, scope)}
        refs = dict(refs or {})
        times, ref = self.substitute(fields.get("times"), key_of_times, scope)
        if ref:
            refs["times"] = ref
        if type(times) is not int or not 1 <= times <= 10_000:
            found = show(times) + (f" (from {expr.spelled(ref)})" if ref else "")
            raise self.error(key_of_times, f"expected a repeat count from 1 to 10000, found {found}", via=scope.via)
        inner = replace(scope, path=path, symbols={**scope.symbols, INDEX: 0}, in_repeat=True)
        reads = self.index_reads
        body = self.sequence(fields.get("body"), key + ("body",), inner)
        if self.index_reads > reads:
            size = sum(1 for _ in walk(body))
            if size * times > MAX_UNROLLED:
                raise self.error(
                    key_of_times,
                    f"expected a repeat whose body reads the index i to have at most {MAX_UNROLLED:,} layers in all "
                    f"(each iteration is resolved to check it), found {times} x {size}",
                    via=scope.via,
                )
            for i in range(1, times):
                again = self.sequence(fields.get("body"), key + ("body",), replace(inner, symbols={**scope.symbols, INDEX: i}))
                self.same_structure(body, again, i, scope)
        return self.build(Repeat, {**common, "refs": refs, "times": times, "body": body}, key, scope)

    def same_structure(self, first: list[Node], other: list[Node], i: int, scope: Scope) -> None:
        """Iterations of a repeat are one body in the IR (iteration 0, with the index in
        ``refs``): they may differ only in non-integer numbers (rates, scales), which no
        shape or count depends on. A block call's arguments are judged by what they
        produce in its body (an integer index that only feeds a rate is fine)."""
        for a, b in zip(walk(first), walk(other), strict=True):
            for name in type(a).model_fields:
                if name in SYSTEM_FIELDS or name in ("body", "shortcut", "paths", "args"):
                    continue
                x, y = getattr(a, name), getattr(b, name)
                for field, first_value, value in [(name, x, y)] if x != y else []:
                    if not (type(first_value) is float or type(value) is float) or isinstance(first_value, bool) or isinstance(value, bool):
                        where = a.where
                        raise SpecError(
                            Location(where.file, where.line, where.col, where.spec_path),
                            f"expected '{field}' to be the same in every iteration (only non-integer numbers such as rates may "
                            f"depend on the repeat index), found {show(first_value)} at i=0 and {show(value)} at i={i}",
                        )

    def where(self, key: Key, scope: Scope) -> Where:
        """A node's location: its op key where there is one, else its value."""
        loc = self.source.loc(key, at_key=True)
        return Where(file=loc.file, line=loc.line, col=loc.col, spec_path=loc.path + (f" (in {scope.via})" if scope.via else ""))

    def op(self, kind, fields, key, common, refs, scope) -> Node:
        cls = OPS[kind]
        merged: dict[str, Any] = {}
        keys: dict[str, Key] = {}
        for source_key, values in ((("defaults", kind), self.defaults.get(kind, {})), (key, fields)):
            for field, value in values.items():
                if field in SYSTEM_FIELDS:
                    raise self.error(
                        source_key + (field,),
                        f"expected a field of '{kind}', found the reserved name '{field}'",
                        at_key=True,
                        via=scope.via,
                    )
                merged[field], ref = self.substitute(value, source_key + (field,), scope)
                keys[field] = source_key + (field,)
                if ref:
                    refs[field] = ref
                else:
                    refs.pop(field, None)
        return self.build(cls, {**common, **merged, "refs": refs}, key, scope, keys)

    def call(self, block, fields, key, common, refs, scope) -> Call:
        if block in scope.stack:
            chain = " -> ".join(scope.stack + (block,))
            raise self.error(key, f"expected blocks that do not call themselves, found {chain}", via=scope.via)
        declared, body, _ = self.blocks[block]
        args = {}
        for arg, value in fields.items():
            if arg not in declared:
                raise self.error(
                    key + (arg,),
                    f"expected an argument of block '{block}' ({', '.join(declared) or 'none'}), found '{arg}'{did_you_mean(arg, declared)}",
                    at_key=True,
                    via=scope.via,
                )
            args[arg], ref = self.substitute(value, key + (arg,), scope)
            if ref:
                refs[arg] = ref
        for arg, default in declared.items():
            if arg not in args:
                if default is None:
                    raise self.error(key, f"expected a value for argument '{arg}' of block '{block}', found none", via=scope.via)
                args[arg] = default
        here = self.source.loc(key).path
        # a block body sees the spec's params and its own arguments, not its caller's
        inner = Scope({**self.params, **args}, common["path"], f"{scope.via} > {here}" if scope.via else here, scope.stack + (block,))
        nodes = self.sequence(body, ("blocks", block, "body"), inner)
        return self.build(Call, {**common, "refs": refs, "block": block, "args": args, "body": nodes}, key, scope, {"args": key})

    def substitute(self, value: Any, key: Key, scope: Scope) -> tuple[Any, str | None]:
        """``$name`` -> (its value, 'name'); ``${...}`` -> (its value, the expression);
        anything else -> (value, None)."""
        if isinstance(value, str) and value.startswith("${"):
            return self.expression(value, key, scope)
        if isinstance(value, str) and value.startswith("$"):
            if value.startswith("$$"):
                return value[1:], None
            name = value[1:]
            if scope.in_repeat and name == INDEX:
                self.index_reads += 1
            if name not in scope.symbols:
                raise self.error(
                    key, f"expected a param or block argument, found '{value}'{did_you_mean(name, scope.symbols)}", via=scope.via
                )
            return scope.symbols[name], name
        if isinstance(value, (list, dict)):
            items = value if isinstance(value, list) else value.values()
            if any(isinstance(v, str) and v.startswith("$") and not v.startswith("$$") for v in items):
                if key == ("input",):
                    raise self.error(key, f"expected [height, width, channels], found {show(value)}", via=scope.via)
                raise self.error(key, "expected a $reference as a whole field value, found one inside a list or mapping", via=scope.via)
        return value, None

    def expression(self, value: str, key: Key, scope: Scope) -> tuple[Any, str]:
        """The value of ``${...}``; an error points at the offending part of the text."""
        text = value[2:-1] if value.endswith("}") else None
        try:
            if text is None:
                raise expr.ExprError("expected '}' at the end of the expression, found none", len(value) - 2)
            tree = expr.parse(text)
            if scope.in_repeat and INDEX in expr.names(tree):
                self.index_reads += 1
            result = expr.evaluate(tree, scope.symbols)
        except expr.ExprError as exc:
            loc = self.source.loc(key)
            start = self.source.text_start(key)
            if start is not None:  # else the value's start: its text is not its source
                loc.col += 2 + exc.start + start
            if scope.via:
                loc.path += f" (in {scope.via})"
            raise SpecError(loc, exc.message) from None
        return result, text.strip()

    def build(self, cls: type[Node], data: dict[str, Any], key: Key, scope: Scope, keys: dict[str, Key] | None = None) -> Node:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise self.validation_error(exc, key, keys or {}, cls, data.get("refs", {}), scope.via) from None

    def validation_error(self, exc: ValidationError, key: Key, keys: dict[str, Key], cls: type, refs: dict | None = None, via: str = ""):
        errors = exc.errors()
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tuple[", "int", "literal[")))]
        field = loc[0] if loc else None
        base = keys.get(field, key + ((field,) if field is not None else ())) if isinstance(field, str) else key
        at = base + tuple(loc[1:])
        owner, name = _owner(cls, loc)
        kind = owner.model_fields["op"].default if "op" in owner.model_fields else dotted_key(key + tuple(loc[:-1]))
        fields = [f for f in owner.model_fields if f not in SYSTEM_FIELDS]
        if err["type"] == "extra_forbidden":
            return self.error(
                at,
                f"expected a field of '{kind}' ({', '.join(fields)}), found '{name}'{did_you_mean(str(name), fields)}",
                at_key=True,
                via=via,
            )
        if err["type"] == "missing":
            return self.error(key + tuple(loc[:-1]), f"expected a '{name}' field in '{kind}', found none", via=via)
        found = show(err.get("input"))
        if refs and field in refs:
            found += f" (from {expr.spelled(refs[field])})"
        msg = err["msg"].replace("Input should be ", "").replace("Value should have ", "").replace("Value error, ", "")
        if msg.startswith(("greater", "less")):
            msg = "a value " + msg
        if msg.startswith("a valid tuple"):
            msg = "an integer or a list [height, width] of integers"
        return self.error(at, f"expected {msg}, found {found}", via=via)


def _owner(cls: type, loc: list) -> tuple[type, Any]:
    """The model that holds the field at ``loc`` (descending nested models), and its name."""
    owner = cls
    for part in loc[:-1]:
        field = owner.model_fields.get(part) if isinstance(part, str) else None
        inner = getattr(field, "annotation", None)
        for candidate in getattr(inner, "__args__", ()) or (inner,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                owner = candidate
                break
        else:
            break
    return owner, (loc[-1] if loc else None)
