"""What every code-generating backend needs to know about an annotated network, decided
once here so that backends (and their templates) only format it:

- ``Plan.ident[path]``: a unique, safe Python identifier for each node within its parent
  list (hostile spec names cannot reach code except through this);
- ``Plan.blocks``: one definition per block used, taken from its first instance (all
  instances share their structure; values that differ are ``refs`` to arguments);
- ``Plan.signature[block]``: the block's declared arguments, then the spec params its
  body uses (directly or through nested blocks), which the generated code passes in;
- ``Plan.expression``: a field written ``$name`` or ``${...}`` as Python source over
  those identifiers (and the loop variable of an enclosing repeat), and ``Plan.needs``:
  what those expressions call that the module must provide (``math``, ``make_divisible``).
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from archc.codegen.naming import Namespace, class_name
from archc.ir.ops import Call, Node, Repeat, children, walk
from archc.passes.analysis import Analysis
from archc.syntax import expr

Sizes = Callable[[str, str], str]  # (height/width/channels, tensor name) -> Python source


@dataclass
class BlockPlan:
    name: str  # as in the spec
    cls: str  # CamelCase identifier for a class
    func: str  # snake_case identifier for a function
    instance: Call  # the first instance: its body is the template
    args: list[str]  # declared argument names (identifiers)
    params: list[str]  # spec params the body needs
    tensors: list[str] = field(default_factory=list)  # its tensor inputs (identifiers, none taken by an argument)


@dataclass
class Plan:
    analysis: Analysis
    ident: dict[str, str] = field(default_factory=dict)
    blocks: dict[str, BlockPlan] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # spec param -> identifier
    owner: dict[str, str | None] = field(default_factory=dict)  # node path -> enclosing block
    in_repeat: set[str] = field(default_factory=set)  # paths of nodes that see a repeat index
    needs: set[str] = field(default_factory=set)  # 'math', 'make_divisible'

    def signature(self, block: str) -> list[str]:
        plan = self.blocks[block]
        return plan.args + plan.params

    def symbol(self, node: Node, field_name: str, value: Any, index: str | None = None, size: Sizes | None = None) -> str:
        """A field as Python source: its expression if written ``$name``/``${...}``,
        else a literal. ``index``: the loop variable of the enclosing repeat; ``size``:
        the backend's ``height(t)`` ... for a ``when:`` over tensor sizes."""
        ref = node.refs.get(field_name)
        return self.expression(node, ref, index, size) if ref else literal(value)

    def expression(self, node: Node, ref: str, index: str | None = None, size: Sizes | None = None) -> str:
        """``ref`` (as the resolver recorded it on ``node``) as Python source: names are the
        repeat index, else arguments of the enclosing block, else params; the tensors of
        ``height(t)`` ... are ``size``'s (a backend without it cannot render them)."""
        block = self.owner.get(node.path)
        declared = list(self.analysis.net.blocks[block].args) if block else []

        def name(n: str) -> str:
            if n == expr.INDEX and node.path in self.in_repeat:
                if index is None:
                    raise ValueError(f"{node.path}: no loop variable for the repeat index")
                return index
            return self.blocks[block].args[declared.index(n)] if n in declared else self.params[n]

        tree = expr.parse(ref)
        if expr.tensors(tree) and size is None:
            raise ValueError(f"{node.path}: a when: over tensor sizes, which this backend does not render")
        return expr.to_python(tree, name, size)

    def input_size(self) -> list[str]:
        """The input's (height, width, channels) as Python source over the params."""
        net = self.analysis.net
        refs = net.input_refs
        return [expr.to_python(expr.parse(refs[i]), self.params.__getitem__) if i in refs else literal(v) for i, v in enumerate(net.input)]

    def reads_index(self, repeat: Repeat) -> bool:
        """Whether a repeat's body reads its index (so the generated loop must name it)."""
        return any(expr.INDEX in expr.names(expr.parse(r)) for n in _direct(repeat.body) for r in n.refs.values())


def helper_source(name: str) -> str:
    """The source of a function generated code defines (for its expressions, or to apply
    its fold tables): archc's own, so that the generated model computes exactly what
    archc computed, and one function serves every backend."""
    from archc.passes import fold

    return inspect.getsource({"make_divisible": expr.make_divisible, "_expand": fold._expand}[name]).rstrip() + "\n"


def literal(value: Any) -> str:
    """A Python literal for an IR value: ints, floats, bools, strings, tuples, None.

    The one door through which values reach generated code: whatever it returns reads
    back as the value (``ast.literal_eval``), and what has no literal (nan, inf, a
    mapping, an object) raises TypeError, so a renderer cannot emit a broken module."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"no Python literal for the float {value!r}")
        return repr(value)
    if isinstance(value, str):
        return _NON_ASCII.sub(_escape, json.dumps(value, ensure_ascii=False))  # a valid Python string literal too
    if isinstance(value, (tuple, list)):
        inner = ", ".join(literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    raise TypeError(f"no Python literal for a {type(value).__name__}")


_NON_ASCII = re.compile(r"[^\x00-\x7e]")


def _escape(match: re.Match) -> str:
    """Python's escape for a character (JSON's surrogate pairs would read back as two)."""
    n = ord(match.group())
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _tensor_names(tensors: Iterable[str], taken: set[str]) -> list[str]:
    """Identifiers for a block's tensor inputs that no argument, param or ``<name>_channels``
    of another takes."""
    space = Namespace(taken | {"self", "in_channels"})
    out = []
    for name in tensors:
        ident = name if name == "x" and "x" not in space.taken else space.create(name, "tensor")  # x: the usual input's name
        space.taken.add(ident)
        space.create(f"{ident}_channels")
        out.append(ident)
    return out


def plan(analysis: Analysis, reserved: Iterable[str] = ()) -> Plan:
    """``reserved``: names a backend's generated code uses itself (its helpers, the
    framework's attribute names), which no identifier made from a spec name may take."""
    net = analysis.net
    result = Plan(analysis)
    reserved = set(reserved) | {expr.INDEX}  # the repeat index's loop variable: no param or argument takes it
    names = Namespace({"create_model", "Model"} | reserved)
    result.params = {p: names.create(p, "param") for p in net.params}
    flows = Namespace(reserved, attribute=True)
    for flow, layers in net.flows.items():
        result.ident[flow] = flows.create(flow, "flow")
        _name_sequence(layers, result.ident, reserved)
    args = {block: _arg_names(list(decl.args), result.params, reserved) for block, decl in net.blocks.items()}
    variables = set(result.params.values()) | {a for names_ in args.values() for a in names_}
    classes = Namespace({"Model", "SamePad"} | reserved | variables)
    funcs = Namespace(set(result.params.values()) | {"create_model", "build"} | reserved)
    for node in walk([n for layers in net.flows.values() for n in layers]):
        if isinstance(node, Call) and node.block not in result.blocks:
            result.blocks[node.block] = BlockPlan(
                node.block,
                classes.create(class_name(node.block), "Block"),
                funcs.create(node.block, "block"),
                node,
                args[node.block],
                [],
                _tensor_names(node.tensors, set(args[node.block]) | set(result.params.values()) | reserved),
            )
    _owners(result.owner, [n for layers in net.flows.values() for n in layers], None)
    _repeated(result.in_repeat, [n for layers in net.flows.values() for n in layers], False)
    refs = [r for node in walk([n for layers in net.flows.values() for n in layers]) for r in node.refs.values()]
    result.needs = set().union(*(expr.needs(expr.parse(r)) for r in [*refs, *net.input_refs.values()]))
    for block in result.blocks:
        used = _free_params(result, block, set())
        result.blocks[block].params = [result.params[p] for p in net.params if p in used]
    return result


def _owners(owner: dict[str, str | None], layers: list[Node], block: str | None) -> None:
    """Record the block whose arguments each node's ``$refs`` see (None: the params)."""
    for node in layers:
        owner[node.path] = block
        for _, seq in children(node):
            _owners(owner, seq, node.block if isinstance(node, Call) else block)


def _repeated(paths: set[str], layers: list[Node], inside: bool) -> None:
    """Record the nodes whose expressions see a repeat index (a block body does not)."""
    for node in layers:
        if inside:
            paths.add(node.path)
        for _, seq in children(node):
            _repeated(paths, seq, False if isinstance(node, Call) else inside or isinstance(node, Repeat))


def _direct(layers: list[Node]):
    """The nodes of ``layers`` and below, not looking into block bodies."""
    for node in layers:
        yield node
        if not isinstance(node, Call):
            for _, seq in children(node):
                yield from _direct(seq)


def _arg_names(args: list[str], params: dict[str, str], reserved: set[str]) -> list[str]:
    """A block's argument identifiers: unique, and none equal to a param's identifier
    (both end up in one signature) unless the argument shadows that very param."""
    space = Namespace(reserved | {ident for name, ident in params.items() if name not in args})
    return [space.create(a, "arg") for a in args]


def _name_sequence(layers: list[Node], ident: dict[str, str], reserved: set[str]) -> None:
    space = Namespace({"forward", "training"} | reserved, attribute=True)
    for node in layers:
        ident[node.path] = space.create(node.name, node.op)
        labels = Namespace(reserved, attribute=True)  # one per node, so that two paths never share a name
        for label, seq in children(node):
            ident.setdefault(f"{node.path}:{label}", labels.create(label, "path"))
            _name_sequence(seq, ident, reserved)


def _free_params(result: Plan, block: str, seen: set[str]) -> set[str]:
    """Spec params referenced inside ``block`` (not shadowed by its arguments)."""
    bp = result.blocks[block]
    declared = set(result.analysis.net.blocks[block].args)
    used: set[str] = set()
    for node in walk(bp.instance.body):
        used |= {name for r in node.refs.values() for name in expr.names(expr.parse(r)) if name not in declared}
        if isinstance(node, Call) and node.block not in seen:
            used |= _free_params(result, node.block, seen | {block}) - declared
    return used & set(result.analysis.net.params)
