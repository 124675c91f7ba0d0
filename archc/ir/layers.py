"""A layer as the spec writes it -> an IR node: a sequence's names, the layer's forms
(``op``, ``{op: value}``, ``{op: {fields}}``), ``when``, an op's fields merged over the
``defaults:`` section, and the repeat rule that lets iterations differ only in rates.
A combinator's own mapping (a residual's body and shortcut, a call's arguments...)
becomes its node in its class's ``parse`` (archc/ir/ops.py), with this as the resolver.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from archc.ir.ops import COMBINATORS, OPS, SHORTHAND, SHORTHAND_LISTS, SYSTEM_FIELDS, Call, Node, Where, walk
from archc.ir.substitute import INDEX, Scope, Substituter
from archc.ir.validate import validated
from archc.syntax import expr
from archc.syntax.errors import Location, SpecError, did_you_mean, show
from archc.syntax.loader import Key, Source

MAX_UNROLLED = 100_000  # layers resolved to check a repeat whose body reads its index


@dataclass
class Written:
    """One layer being resolved: its kind and fields as written, where (``key``, and
    ``keys`` for fields written elsewhere, as a repeated flow's ``repeat:``), its scope,
    what every node gets (``common``: name, path, when, where) and the expressions its
    fields were written as (``refs``, filled as they are read)."""

    kind: str
    fields: dict[str, Any]
    key: Key
    scope: Scope
    common: dict[str, Any]
    refs: dict[str, str] = field(default_factory=dict)
    keys: dict[str, Key] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.common["path"]

    def at(self, name: str) -> Key:
        """Where the field ``name`` is written."""
        return self.keys.get(name, self.key + (name,))

    def inner(self, part: str) -> Scope:
        """The scope of the sub-sequence ``part`` (its nodes' paths run below it)."""
        return self.scope.at(f"{self.path}/{part}")

    def node(self, **fields: Any) -> dict[str, Any]:
        """The data of the node: what every node gets, the refs, then ``fields``."""
        return {**self.common, "refs": self.refs, **fields}


class Layers(Substituter):
    """Layers -> nodes, with the document's params, defaults and blocks (set by the Resolver)."""

    def __init__(self, source: Source):
        super().__init__(source)
        self.params: dict[str, Any] = {}
        self.defaults: dict[str, dict[str, Any]] = {}
        self.blocks: dict[
            str, tuple[dict[str, Any], list, str, tuple[str, ...], tuple[str, ...]]
        ] = {}  # name -> (args, body, doc, inputs, outputs)

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
        if kind in COMBINATORS:
            value = COMBINATORS[kind].short_form(value)
        if value is None:
            fields: dict[str, Any] = {}
        elif isinstance(value, dict):
            fields = dict(value)
        elif kind in SHORTHAND and (not isinstance(value, list) or kind in SHORTHAND_LISTS):
            fields = {"from" if SHORTHAND[kind] == "reads" else SHORTHAND[kind]: value}  # a merge's `add: [a, b]`
        else:
            raise self.error(fkey, f"expected a mapping of fields for '{kind}', found {show(value)}", via=scope.via)
        return kind, fields, fkey

    def layer(self, kind: str, fields: dict[str, Any], key: Key, name: str, scope: Scope) -> Node:
        where = self.where(key, scope)
        refs: dict[str, str] = {}
        when = True
        bound = self.shape_test(fields, key + ("when",), scope, refs)
        if "when" in fields:
            when, ref = self.substitute(fields.pop("when"), key + ("when",), scope)
            if ref:
                refs["when"] = ref
            if not isinstance(when, bool):
                raise self.error(key + ("when",), f"expected true or false, found {show(when)}", via=scope.via)
        reads = self.tensor_names(fields.pop("from", None), key + ("from",), scope)
        saves = self.tensor_names(fields.pop("as", None), key + ("as",), scope)
        common = {
            "name": name,
            "path": f"{scope.path}/{name}",
            "when": when,
            "where": where,
            "reads": reads,
            "saves": saves,
            "bound": bound,
        }
        layer = Written(kind, fields, key, scope, common, refs)
        if kind in OPS:
            return self.op(layer)
        return COMBINATORS.get(kind, Call).parse(layer, self)

    def shape_test(self, fields: dict[str, Any], key: Key, scope: Scope, refs: dict[str, str]) -> dict[str, Any]:
        """A ``when:`` over tensor sizes (``${height(p) != height(x)}``) is decided where
        the shapes are known (archc.passes.shapes): here it is only parsed, kept in
        ``refs``, and the params and arguments it reads are resolved (``bound``)."""
        raw = fields.get("when")
        if not (isinstance(raw, str) and raw.startswith("${") and raw.endswith("}")):
            return {}
        try:
            tree = expr.parse(raw[2:-1])
        except expr.ExprError:
            return {}  # substitute() reports it, located
        if not expr.tensors(tree):
            return {}
        fields.pop("when")
        others = expr.names(tree) - expr.tensors(tree)
        for name in sorted(others):
            if name == INDEX and scope.in_repeat:  # the IR keeps iteration 0's values: sizes are what may differ
                raise self.error(key, "expected a when: over tensor sizes that does not read the repeat index, found 'i'", via=scope.via)
            if name not in scope.symbols:
                raise self.error(
                    key, f"expected a param or block argument, found '{name}'{did_you_mean(name, scope.symbols)}", via=scope.via
                )
        refs["when"] = raw[2:-1]
        return {name: scope.symbols[name] for name in sorted(others)}

    def tensor_names(self, raw: Any, key: Key, scope: Scope) -> tuple[str, ...]:
        """``from:`` / ``as:``: a tensor name or a list of them (names, not $references)."""
        if raw is None:
            return ()
        names = raw if isinstance(raw, list) else [raw]
        for i, name in enumerate(names):
            if not (isinstance(name, str) and name.isidentifier() and len(name) <= 100):
                where = key + ((i,) if isinstance(raw, list) else ())
                raise self.error(where, f"expected a tensor name (an identifier) or a list of them, found {show(name)}", via=scope.via)
        if not names:
            raise self.error(key, "expected a tensor name (an identifier) or a list of them, found []", via=scope.via)
        return tuple(names)

    def op(self, layer: Written) -> Node:
        """An op's node: the ``defaults:`` section's fields for it, then its own."""
        kind = layer.kind

        def reject(field: str) -> str:
            return f"expected a field of '{kind}', found the reserved name '{field}'" if field in SYSTEM_FIELDS else ""

        merged: dict[str, Any] = {}
        keys: dict[str, Key] = {}
        for source_key, values in ((("defaults", kind), self.defaults.get(kind, {})), (layer.key, layer.fields)):
            merged.update(self.values(values, source_key, layer.scope, layer.refs, reject))
            keys.update({field: source_key + (field,) for field in values})
        return self.build(OPS[kind], {**layer.common, **merged, "refs": layer.refs}, layer, keys)

    # -- what a combinator's parse asks of the resolver ---------------------------------

    def check_fields(self, cls: type[Node], layer: Written) -> None:
        """The layer writes only fields of ``cls`` beyond those every node has."""
        own = tuple(f for f in cls.model_fields if f not in Node.model_fields and f != "op")
        self.check_keys(layer.fields, layer.key, own, f"{cls.model_fields['op'].default} key")

    def field(self, layer: Written, name: str, default: Any = None) -> Any:
        """The value of field ``name`` (its expression into the layer's refs)."""
        value, ref = self.substitute(layer.fields.get(name, default), layer.at(name), layer.scope)
        if ref:
            layer.refs[name] = ref
        return value

    def build(self, cls: type[Node], data: dict[str, Any], layer: Written, keys: dict[str, Key] | None = None) -> Node:
        return validated(self.source, cls, data, layer.key, keys=keys, refs=data.get("refs", {}), via=layer.scope.via)

    def expand(self, block: str, args: dict[str, Any], layer: Written) -> list[Node]:
        """The body of ``block`` resolved for a call with ``args``."""
        scope = layer.scope
        here = self.source.loc(layer.key).path
        # a block body sees the spec's params and its own arguments, not its caller's
        inner = Scope({**self.params, **args}, layer.path, f"{scope.via} > {here}" if scope.via else here, scope.stack + (block,))
        return self.sequence(self.blocks[block][1], ("blocks", block, "body"), inner)

    def iterations(self, layer: Written, times: int) -> list[Node]:
        """A repeat's body, resolved at index 0; where it reads the index, every other
        iteration is resolved too and must agree with it (:meth:`same_structure`)."""
        scope = layer.scope
        inner = replace(scope, path=layer.path, symbols={**scope.symbols, INDEX: 0}, in_repeat=True)
        reads = self.index_reads
        body = self.sequence(layer.fields.get("body"), layer.at("body"), inner)
        if self.index_reads > reads:
            size = sum(1 for _ in walk(body))
            if size * times > MAX_UNROLLED:
                raise self.error(
                    layer.at("times"),
                    f"expected a repeat whose body reads the index i to have at most {MAX_UNROLLED:,} layers in all "
                    f"(each iteration is resolved to check it), found {times} x {size}",
                    via=scope.via,
                )
            for i in range(1, times):
                again = self.sequence(layer.fields.get("body"), layer.at("body"), replace(inner, symbols={**scope.symbols, INDEX: i}))
                self.same_structure(body, again, i)
        return body

    @staticmethod
    def same_structure(first: list[Node], other: list[Node], i: int) -> None:
        """Iterations of a repeat are one body in the IR (iteration 0, with the index in
        ``refs``): they may differ only in non-integer numbers (rates, scales), which no
        shape or count depends on. A block call's arguments are judged by what they
        produce in its body (an integer index that only feeds a rate is fine)."""
        for a, b in zip(walk(first), walk(other), strict=True):
            for name in type(a).model_fields:
                if name in SYSTEM_FIELDS or name in ("body", "shortcut", "paths", "args"):
                    continue
                x, y = getattr(a, name), getattr(b, name)
                for field_name, first_value, value in [(name, x, y)] if x != y else []:
                    if not (type(first_value) is float or type(value) is float) or isinstance(first_value, bool) or isinstance(value, bool):
                        where = a.where
                        raise SpecError(
                            Location(where.file, where.line, where.col, where.spec_path),
                            f"expected '{field_name}' to be the same in every iteration (only non-integer numbers such as rates may "
                            f"depend on the repeat index), found {show(first_value)} at i=0 and {show(value)} at i={i}",
                        )

    def where(self, key: Key, scope: Scope) -> Where:
        """A node's location: its op key where there is one, else its value."""
        loc = self.source.loc(key, at_key=True)
        return Where(file=loc.file, line=loc.line, col=loc.col, spec_path=loc.path + (f" (in {scope.via})" if scope.via else ""))
