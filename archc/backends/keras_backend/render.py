"""Turn an annotated network into the data the Keras templates lay out.

Every decision is made here (which Keras layer a node becomes, which keyword arguments
it needs, which names, conditions and loops surround it, where a long call is wrapped);
the templates in ``templates/`` only print it. Nothing here imports a framework. Each
op is one record in ``OPS`` (a :class:`KerasOp`: emitter, weight names, output layer,
fold target, the helpers the generated module then defines).

Layer names: a node's Keras name is the identifiers of its IR path (``plan.ident``)
joined by '_'. Residual and branch children add their label ('body', 'shortcut', the
path name); a repeat adds the loop index after its own name. :func:`layer_names` gives
the same names for every IR path, for tools that map IR nodes to Keras layers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from archc.codegen.naming import Namespace, identifier
from archc.codegen.plan import Plan, helper_source, literal, plan
from archc.ir.ops import Node, tensor_reads
from archc.passes import fold
from archc.passes.analysis import Analysis
from archc.passes.shapes import INPUT
from archc.syntax import expr
from archc.syntax.errors import Location, SpecError

from .backbone import BACKBONE_NAMES, KerasBackbone, keras_backbone

LINE_LENGTH = 140  # the project's ruff line length: generated code is already formatted
INDENT = "    "
HELPER = "_separable_conv"  # spec names never start with '_', so no block can take it
LOOP_VARS = ("i", "j", "k")
AMBIGUOUS = {"l", "O", "I"}  # E741
TEMPLATES = Path(__file__).parent / "templates"


# -- statements: what the templates print -------------------------------------------------


@dataclass
class Stmt:
    """One statement of a generated function.

    ``call``: ``head`` + ``args`` + ``tail``, printed on one line (wrap 'line'), with the
    arguments on one line of their own ('body'), or one argument a line with a magic
    trailing comma ('each'): layouts that ruff format leaves as they are. ``block``: a
    header laid out as a call (an ``if``/``for`` line, colon included) and an indented
    ``body``. ``line``: ``text`` as is. ``comment``, ``blank``: a comment, an empty line.
    ``collection``: the arguments are a tuple's items, which ruff never puts on one line
    of their own."""

    kind: str
    text: str = ""
    head: str = ""
    args: list[str] = field(default_factory=list)
    tail: str = ""
    wrap: str = "line"
    body: list[Stmt] = field(default_factory=list)
    collection: bool = False


def call(head: str, args: list[str], tail: str) -> Stmt:
    return Stmt("call", head=head, args=args, tail=tail)


def raise_value_error(message: str) -> Stmt:
    return call("raise ValueError(", [message], ")")


def line(text: str) -> Stmt:
    return Stmt("line", text=text)


def block(header: str | Stmt, body: list[Stmt]) -> list[Stmt]:
    """``header`` (a line, or a call-shaped line) with ``body`` under it; nothing when
    the body is empty."""
    if isinstance(header, str):
        header = call(header, [], "")
    return [Stmt("block", head=header.head, args=header.args, tail=header.tail, collection=header.collection, body=body)] if body else []


def merge_conditions(stmts: list[Stmt]) -> list[Stmt]:
    """Adjacent ``if`` blocks on the same condition become one (conditions are names that
    a generated function never reassigns, so this keeps the meaning)."""
    out: list[Stmt] = []
    for s in stmts:
        s.body = merge_conditions(s.body)
        same = out and out[-1].kind == "block" and (out[-1].head, out[-1].args, out[-1].tail) == (s.head, s.args, s.tail)
        if s.kind == "block" and s.head.startswith("if ") and same:
            out[-1].body = merge_conditions(out[-1].body + s.body)
        else:
            out.append(s)
    return out


def layout(stmts: list[Stmt], depth: int) -> list[Stmt]:
    """Choose each call's layout for its indentation, as ruff format would."""
    for s in stmts:
        width = len(INDENT) * depth
        if s.kind in ("call", "block"):
            joined = ", ".join(s.args)
            if width + len(s.head) + len(joined) + len(s.tail) <= LINE_LENGTH:
                s.wrap = "line"
            elif width + len(INDENT) + len(joined) <= LINE_LENGTH and not s.tail.startswith(")(") and not s.collection:
                s.wrap = "body"  # with a trailer, ruff would split the trailer instead
            else:
                s.wrap = "each"
        layout(s.body, depth + 1)
    return stmts


# -- text that reaches the module ---------------------------------------------------------


def prose(text: Any) -> str:
    """Free text from a spec (descriptions, docs) made safe inside a docstring: one line of
    printable characters, backslashes and double quotes escaped."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return " ".join(text.split()).replace("\\", "\\\\").replace('"', '\\"')


def fstring_text(text: str) -> str:
    """Any text as the literal part of a double-quoted f-string: printable ASCII as is
    (braces doubled), everything else escaped, double quotes as \\x22 so that ruff
    keeps the double quotes."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append("\\x22")
        elif ch in "{}":
            out.append(ch * 2)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def wrap(text: str, width: int = 88, indent: str = "", first: str = "") -> list[str]:
    return textwrap.wrap(
        text, width, initial_indent=first or indent, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
    ) or [first.rstrip()]


def docstring(paragraphs: list[list[str]], indent: str) -> list[str]:
    """Docstring lines (each without the leading indent of the first line) from
    paragraphs of already-wrapped lines; one line when it fits."""
    if len(paragraphs) == 1 and len(paragraphs[0]) == 1 and len(indent) + len(paragraphs[0][0]) + 6 <= LINE_LENGTH:
        return [f'"""{paragraphs[0][0]}"""']
    lines = []
    for i, para in enumerate(paragraphs):
        if i:
            lines.append("")
        lines.extend(para)
    lines[0] = '"""' + lines[0]
    lines = [lines[0]] + [f"{indent}{text}" if text else "" for text in lines[1:]]
    return lines + [f'{indent}"""']


def fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def name_expr(pattern: str) -> str:
    """A layer name as Python: a plain string, or an f-string when it holds a variable.
    Patterns are made of identifiers, '_' and ``{variable}`` only."""
    return f'f"{pattern}"' if "{" in pattern else f'"{pattern}"'


# -- names --------------------------------------------------------------------------------


def node_name(p: Plan, prefix: str, node: Node) -> str:
    return f"{prefix}_{p.ident[node.path]}"


def child_prefix(p: Plan, node: Node, name: str, label: str, loop_var: str) -> str:
    """The name prefix of the nodes in one child sequence of ``node`` (named ``name``)."""
    if node.op == "call":
        return name  # its body is named under the call
    if node.indexed:
        return f"{name}_{{{loop_var}}}"
    return f"{name}_{p.ident[f'{node.path}:{label}']}"


def layer_names(p: Plan) -> dict[str, str]:
    """IR path -> Keras layer name, for every node of ``p``'s network that makes a layer.

    Inside repeats the name is a pattern: ``{0}`` is the index of the outermost enclosing
    repeat, ``{1}`` the next, ...: ``names[path].format(*indices)``. A residual names its
    ``layers.add`` and a branches node its ``layers.concatenate`` (absent when the
    addition is dropped by a literal ``use_shortcut: false``). A sepconv is one
    ``SeparableConv2D`` of that name, or, with segments or an activation between, the
    layers ``<name>_spatial`` (DepthwiseConv2D or grouped Conv2D), ``<name>_act`` and
    ``<name>_pointwise``. Nodes with a literal ``when: false`` make no layer; nodes whose
    ``when`` is a param or argument are listed. Raises SpecError when two nodes would get
    the same name (say 'a_b/c' and 'a/b_c')."""
    names: dict[str, str] = {}
    seen: dict[str, Node] = {}

    def visit(nodes: list[Node], prefix: str, depth: int) -> None:
        for node in nodes:
            if not node.in_code():
                continue
            name = node_name(p, prefix, node)
            makes_layer = (
                not node.splits
                and node.op not in ("repeat", "call", "residual")
                or (node.op == "residual" and (node.use_shortcut or "use_shortcut" in node.refs))
            )
            if makes_layer:
                if name in seen:
                    w = node.where
                    raise SpecError(
                        Location(w.file, w.line, w.col, w.spec_path),
                        f"expected layer names that differ once joined with '_', found '{name}' for both "
                        f"{seen[name].path} and {node.path} (rename one)",
                    )
                seen[name] = node
                names[node.path] = name
            for label, seq in _children(node):
                visit(seq, child_prefix(p, node, name, label, str(depth)), depth + node.indexed)

    for flow, layers in p.analysis.net.flows.items():
        visit(layers, p.ident[flow], 0)
    return names


def _children(node: Node) -> list[tuple[str, list[Node]]]:
    """A node's child sequences in the order the generated code calls them (a residual's
    shortcut first, as keras.applications does)."""
    if node.op == "residual":
        return (
            [("shortcut", node.shortcut), ("body", node.body)]
            if node.use_shortcut or "use_shortcut" in node.refs
            else [("body", node.body)]
        )
    return node.children()


# -- the renderer ---------------------------------------------------------------------------


@dataclass
class Scope:
    """Local names of one generated function."""

    names: Namespace
    loops: dict[int, str] = field(default_factory=dict)  # repeat depth -> loop variable
    depth: int = 0
    tensors: dict[str, str] = field(default_factory=dict)  # tensor name (as:) -> its local variable

    def loop_var(self) -> str:
        if self.depth not in self.loops:
            base = LOOP_VARS[self.depth] if self.depth < len(LOOP_VARS) else f"i{self.depth}"
            self.loops[self.depth] = self.names.create(base)
        return self.loops[self.depth]


class Renderer:
    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        self.net = analysis.net
        self.plan = plan(analysis, (*fold.MODULE_NAMES, *BACKBONE_NAMES))  # templates/fold.py.j2, backbone.py.j2 define them
        self.helpers: set[str] = set()  # helpers the module defines: _separable_conv, LayerScale
        self.index: str | None = None  # the loop variable of the repeat being rendered
        self.read_names = tensor_reads(analysis.net)  # the names some layer or output reads
        self.backbone: KerasBackbone | None = None  # the backbone API (render sets it)
        self.globals = {"keras", "layers", "create_model"} | RESERVED | {b.func for b in self.plan.blocks.values()}
        # each block function's name-prefix parameter: 'name' unless an argument has it
        self.prefix = {b: Namespace(set(self.plan.signature(b))).create("name") for b in self.plan.blocks}

    def scope(self, taken: list[str]) -> Scope:
        return Scope(Namespace(set(taken) | set(self.plan.params.values()) | self.globals | AMBIGUOUS | {"x"}))

    def sym(self, node: Node, field_name: str) -> str:
        return self.plan.symbol(node, field_name, getattr(node, field_name), self.index)

    # -- sequences and combinators --

    def sequence(self, nodes: list[Node], src: str, dst: str, prefix: str, scope: Scope) -> list[Stmt]:
        """Statements computing ``dst`` from ``src`` through ``nodes``."""
        out: list[Stmt] = []
        cur = src
        for node in nodes:
            if not node.in_code():  # switched off by a literal: its input passes on, under its names
                cur = scope.tensors[node.reads[0]] if node.reads else cur
                out += self.name_output(node, cur, scope)
                continue
            if node.reads:  # named tensors instead of the previous output
                cur = self.reads(node, scope)
            if self.several(node):
                out += self.several_outputs(node, cur, prefix, scope)
                cur = scope.tensors[node.saves[0]]
                continue
            direct = not node.children() or node.op == "call"
            direct = direct and "when" not in node.refs
            if cur != dst and not direct:
                several = len(node.reads) > 1 and not node.merges  # a block's tensor inputs: off, the first passes on
                out.append(line(f"{dst} = {scope.tensors[node.reads[0]] if several else cur}"))
                cur = cur if several else dst
            stmts = self.node(node, cur, dst, prefix, scope)
            out.extend(block(f"if {self.condition(node, scope)}:", stmts) if "when" in node.refs else stmts)
            cur = dst
            out += self.name_output(node, dst, scope)
        if cur != dst:
            out.append(line(f"{dst} = {cur}"))
        return out

    def several_outputs(self, node: Node, cur: str, prefix: str, scope: Scope) -> list[Stmt]:
        """``x, p = cell(x, p, ...)``: a node that makes several tensors assigns each to its
        name's variable (a name given again keeps it); under a ``when:`` each first gets
        the input that passes on when it is off."""
        targets = []
        for name in node.saves:
            scope.tensors.setdefault(name, scope.names.create(name, "tensor"))
            targets.append(scope.tensors[name])
        stmts = self.node(node, cur, ", ".join(targets), prefix, scope)
        if "when" not in node.refs:
            return stmts
        first = scope.tensors[node.reads[0]] if node.reads else cur
        return [line(f"{t} = {first}") for t in targets if t != first] + block(f"if {self.condition(node, scope)}:", stmts)

    def condition(self, node: Node, scope: Scope) -> str:
        """A ``when:`` as Python: a param's or argument's name, an expression, or sizes of
        named tensors (Keras tensors know their static shape: ``p.shape[1]``)."""
        axis = {"height": "1", "width": "2", "channels": "-1"}
        return self.plan.symbol(node, "when", True, self.index, lambda fn, t: f"{scope.tensors[t]}.shape[{axis[fn]}]")

    def name_output(self, node: Node, value: str, scope: Scope) -> list[Stmt]:
        """``skip = x`` for each name of the node's output that a later layer reads (under a
        param's ``when``: what passed through when it is off). A block's several outputs
        are named by its call itself; a name given again keeps its variable (``x``
        carried through a loop)."""
        out = []
        for name in (n for n in node.saves if n in self.read_names):
            if name not in scope.tensors:
                scope.tensors[name] = scope.names.create(name, "tensor")
            if scope.tensors[name] != value:
                out.append(line(f"{scope.tensors[name]} = {value}"))
        return out

    def reads(self, node: Node, scope: Scope) -> str:
        """The input of a node that reads named tensors: a merge's list, a block's
        positional arguments, or the one variable."""
        names = [scope.tensors[name] for name in node.reads]
        return f"[{', '.join(names)}]" if node.merges else ", ".join(names)

    def node(self, node: Node, cur: str, dst: str, prefix: str, scope: Scope) -> list[Stmt]:
        return OPS[node.op].emit(self, node, cur, dst, node_name(self.plan, prefix, node), scope)

    def call_block(self, node: Node, cur: str, dst: str, name: str, scope: Scope) -> list[Stmt]:
        bp = self.plan.blocks[node.block]
        decl = self.net.blocks[node.block]
        args = [f"{ident}={self.plan.symbol(node, arg, node.args[arg], self.index)}" for arg, ident in zip(decl.args, bp.args)]
        args += [f"{param}={param}" for param in bp.params]
        return [call(f"{dst} = {bp.func}(", [cur, *args, f"{self.prefix[node.block]}={name_expr(name)}"], ")")]

    @staticmethod
    def several(node: Node) -> bool:
        """Whether the node makes several tensors, one per name of its ``as:`` (a split,
        a call of a block with several outputs), which its own statement assigns."""
        return node.splits or len(node.results()) > 1

    def repeat(self, node: Node, cur: str, dst: str, name: str, scope: Scope) -> list[Stmt]:
        var = scope.loop_var()
        scope.depth += 1
        outer, self.index = self.index, var
        body = self.sequence(node.body, dst, dst, child_prefix(self.plan, node, name, "body", var), scope)
        self.index = outer
        scope.depth -= 1
        return block(f"for {var} in range({self.sym(node, 'times')}):", body)

    def gate(self, node: Node, cur: str, x: str, name: str, scope: Scope) -> list[Stmt]:
        """``x * body(x)``: the body runs on a copy, then one multiply (keras.applications'
        squeeze-and-excite)."""
        gate = scope.names.create("gate")
        body = self.sequence(node.body, x, gate, child_prefix(self.plan, node, name, "body", ""), scope)
        return body + [call(f"{x} = layers.multiply(", [f"[{x}, {gate}]", f"name={name_expr(name)}"], ")")]

    def residual(self, node: Node, x: str, name: str, scope: Scope) -> list[Stmt]:
        if not node.use_shortcut and "use_shortcut" not in node.refs:
            return self.sequence(node.body, x, x, child_prefix(self.plan, node, name, "body", ""), scope)
        short = scope.names.create("shortcut")
        shortcut = self.sequence(node.shortcut, x, short, child_prefix(self.plan, node, name, "shortcut", ""), scope)
        body = self.sequence(node.body, x, x, child_prefix(self.plan, node, name, "body", ""), scope)
        add = [call(f"{x} = layers.add(", [f"[{x}, {short}]", f"name={name_expr(name)}"], ")")]
        if "use_shortcut" in node.refs:
            condition = f"if {self.sym(node, 'use_shortcut')}:"
            return block(condition, shortcut) + body + block(condition, add)
        return shortcut + body + add

    def branches(self, node: Node, x: str, name: str, scope: Scope) -> list[Stmt]:
        out: list[Stmt] = []
        outputs = []
        for label, seq in node.paths.items():
            var = scope.names.create(self.plan.ident[f"{node.path}:{label}"], "branch")
            out += self.sequence(seq, x, var, child_prefix(self.plan, node, name, label, ""), scope)
            outputs.append(var)
        return out + [call(f"{x} = layers.concatenate(", [f"[{', '.join(outputs)}]", f"name={name_expr(name)}"], ")")]

    # -- layers --

    def layer(self, cls: str, args: list[str], cur: str, dst: str, name: str) -> list[Stmt]:
        """``dst = layers.cls(args, name=name)(cur)``: an op that is one Keras layer."""
        return [call(f"{dst} = layers.{cls}(", [*args, f"name={name_expr(name)}"], f")({cur})")]

    def opt(self, node: Node, field_name: str, keyword: str, default: Any) -> list[str]:
        """``keyword=value`` when the value is a reference or differs from Keras's default."""
        value = getattr(node, field_name)
        if field_name in node.refs or value != default:
            return [f"{keyword}={self.sym(node, field_name)}"]
        return []

    # -- the module --

    def block_function(self, block: str) -> dict[str, Any]:
        bp = self.plan.blocks[block]
        prefix = self.prefix[block]
        inputs = bp.tensors or ["x"]  # the block's tensor inputs, by their names
        data = "out" if "x" in bp.tensors else "x"  # the running local, never an input a later layer may read
        scope = self.scope([*self.plan.signature(block), prefix, *inputs, data])
        scope.tensors = dict(zip(bp.instance.tensors, inputs))
        body = self.sequence(bp.instance.body, inputs[0], data, f"{{{prefix}}}", scope)
        doc = prose(self.net.blocks[block].doc) or f"The block '{prose(block)}' of the spec."
        return {
            "signature": call(f"def {bp.func}(", [*inputs, *self.plan.signature(block), prefix], "):"),
            "doc": docstring([wrap(doc)], INDENT),
            "body": layout(merge_conditions(body) + [line(f"return {self.returns(bp.instance, data, scope)}")], 1),
        }

    @staticmethod
    def returns(instance: Node, data: str, scope: Scope) -> str:
        """What a block function returns: its last output, or its named ``outputs:``."""
        return ", ".join(scope.tensors[name] for name in instance.results()) or data

    def create_model(self) -> dict[str, Any]:
        net, params = self.net, self.plan.params
        scope = self.scope([])
        inputs = scope.names.create("inputs")
        body: list[Stmt] = []
        for p, ident in params.items():
            decl = net.param_decls[p]
            if decl.choices is not None:
                shown = fstring_text(", ".join(repr(c) for c in decl.choices))
                choices = [literal(c) for c in decl.choices]
                condition = call(f"if {ident} not in (", choices, "):") if len(choices) > 1 else call(f"if {ident} != ", choices, ":")
                condition.collection = True
                body += block(
                    condition,
                    [raise_value_error(f'f"{ident}: expected one of {shown}, found {{{ident}!r}}"')],
                )
            for bound, op, word in ((decl.min, "<", "at least"), (decl.max, ">", "at most")):
                if bound is not None and decl.type in ("int", "float"):
                    value = literal(int(bound) if decl.type == "int" and float(bound).is_integer() else bound)
                    body += block(
                        f"if {ident} {op} {value}:", [raise_value_error(f'f"{ident}: expected {word} {value}, found {{{ident}!r}}"')]
                    )
        body += block(
            'if keras.config.image_data_format() != "channels_last":',
            [raise_value_error('"expected the channels_last image data format (this model is NHWC)"')],
        )
        body += [Stmt("blank"), call(f"{inputs} = keras.Input(", [f"shape=({', '.join(self.plan.input_size())})", 'name="input"'], ")")]
        src = inputs
        scope.tensors = {INPUT: inputs}
        for flow, layers in net.flows.items():
            ident = self.plan.ident[flow]
            body += [Stmt("blank"), Stmt("comment", text=ident)]
            body += self.sequence(layers, src, "x", ident, scope)
            src = "x"
        body += [Stmt("blank")]
        outputs = scope.tensors[next(iter(net.outputs.values()))] if len(net.outputs) == 1 else "x"
        if len(net.outputs) > 1:  # a dict by output name, in the spec's order; a param may switch one off
            outputs = scope.names.create("outputs")
            fixed = [name for name in net.outputs if not net.output_when.get(name, (True, ""))[1]]
            fixed = [name for name in fixed if net.output_when.get(name, (True, ""))[0]]  # on whatever the params
            items = [f"{literal(name)}: {scope.tensors[net.outputs[name]]}" for name in fixed]
            body.append(line(f"{outputs} = {{{', '.join(items)}}}"))
            for name, (_, ref) in net.output_when.items():
                if ref:
                    condition = expr.to_python(expr.parse(ref), self.plan.params.__getitem__)
                    body += block(f"if {condition}:", [line(f"{outputs}[{literal(name)}] = {scope.tensors[net.outputs[name]]}")])
            if len(fixed) < 2:  # params may leave one output on: the model's tensor, as with one output
                one = scope.tensors[net.outputs[fixed[0]]] if fixed else f"next(iter({outputs}.values()))"
                body += block(f"if len({outputs}) == 1:", [line(f"{outputs} = {one}")])
        name = f"name={literal(identifier(net.name, 'model'))}"
        args = [f"{ident}={literal(net.params[p])}" for p, ident in params.items()]
        if self.backbone is None:
            body.append(call("return keras.Model(", [inputs, outputs, name], ")"))
        else:
            model = scope.names.create("model")
            body.append(call(f"{model} = keras.Model(", [inputs, outputs, name], ")"))
            body.append(line(f"return _backbone({model}, include_top, pooling, features_only, out_indices)"))
            args += ["include_top=True", "pooling=None", "features_only=False", "out_indices=None"]
        doc = [
            wrap(
                f"The '{prose(net.name)}' network as a keras.Model: input {fmt(net.input)} (channels_last), "
                f"output {fmt(self.analysis.output)}."
            )
        ]
        entries = [(ident, prose(net.param_decls[p].doc) or "a spec param.") for p, ident in params.items()]
        entries += BACKBONE_ARGS if self.backbone is not None else []
        if entries:
            doc.append(["Args:"] + [text for ident, text in entries for text in wrap(f"{ident}: {text}", indent=INDENT * 2, first=INDENT)])
        return {
            "signature": call("def create_model(", ["*", *args] if args else [], "):"),
            "doc": docstring(doc, INDENT),
            "body": layout(merge_conditions(body), 1),
        }

    def header(self) -> list[str]:
        net, total = self.net, self.analysis.total
        values = ", ".join(f"{ident}={literal(net.params[p])}" for p, ident in self.plan.params.items())
        paragraphs = [
            wrap(f"Keras 3 model for the archc spec '{prose(net.name)}' ({prose(Path(net.file).name)})."),
        ]
        if prose(net.description):
            paragraphs.append(wrap(prose(net.description)))
        paragraphs.append(wrap(f"Params: {values}." if values else "Params: none."))
        paragraphs.append(
            wrap(
                f"Expected counts with these params: {total.trainable:,} trainable and {total.non_trainable:,} non-trainable "
                f"parameters ({total.total:,} in all); input {fmt(net.input)}, output {fmt(self.analysis.output)}. "
                "Plain Keras 3, functional API, channels_last; create_model(**params) builds it."
            )
        )
        paragraphs.append(["generated by archc; edit the spec, not this file."])
        return docstring(paragraphs, "")

    def render(self, env: Environment) -> str:
        names = layer_names(self.plan)  # fails on names that would collide in Keras
        self.backbone = keras_backbone(self.analysis, names)
        blocks = [self.block_function(b) for b in self.plan.blocks]
        model = self.create_model()
        for b in blocks:
            b["signature"] = layout([b["signature"]], 0)[0]
        model["signature"] = layout([model["signature"]], 0)[0]
        folds = [(names[f.producer] + OPS[f.op].fold_into, names[f.bn]) for f in fold.folds(self.analysis)]
        return env.get_template("module.py.j2").render(
            header=self.header(),
            helpers=[template for record in OPS.values() for name, template in record.helpers if name in self.helpers],
            math="math" in self.plan.needs,
            functions=[helper_source(f) for f in sorted(self.plan.needs - {"math"})],
            blocks=blocks,
            model=model,
            folds=folds,
            swaps=[(names[s.pool], names[s.conv]) for s in fold.swaps(self.analysis)],
            expand=helper_source("_expand"),
            backbone=self.backbone,
        )


# -- the table: one emitter per op ------------------------------------------------------------


def _one(cls: str, args: Callable[[Renderer, Node], list[str]]) -> Callable:
    """An emitter for an op that is one Keras layer ``cls`` with ``args(renderer, node)``."""
    return lambda r, node, cur, dst, name, scope: r.layer(cls, args(r, node), cur, dst, name)


def _conv(r: Renderer, node: Node) -> list[str]:
    return [
        r.sym(node, "filters"),
        r.sym(node, "kernel"),
        *r.opt(node, "stride", "strides", (1, 1)),
        *r.opt(node, "padding", "padding", "valid"),
        *r.opt(node, "dilation", "dilation_rate", (1, 1)),
        *r.opt(node, "groups", "groups", 1),
        *r.opt(node, "bias", "use_bias", True),
    ]


def _conv_transpose(r: Renderer, node: Node) -> list[str]:
    return [
        r.sym(node, "filters"),
        r.sym(node, "kernel"),
        *r.opt(node, "stride", "strides", (1, 1)),
        *r.opt(node, "padding", "padding", "valid"),
        *r.opt(node, "bias", "use_bias", True),
    ]


def _depthwise(r: Renderer, node: Node) -> list[str]:
    return [
        r.sym(node, "kernel"),
        *r.opt(node, "stride", "strides", (1, 1)),
        *r.opt(node, "padding", "padding", "valid"),
        *r.opt(node, "dilation", "dilation_rate", (1, 1)),
        *r.opt(node, "depth_multiplier", "depth_multiplier", 1),
        *r.opt(node, "bias", "use_bias", True),
    ]


def _bn(r: Renderer, node: Node) -> list[str]:
    """Only what differs from Keras's BatchNormalization defaults, as keras.applications
    writes it (the IR states every convention; Keras's defaults are its API)."""
    defaults = {"epsilon": 0.001, "momentum": 0.99, "center": True, "scale": True}
    return [arg for name, default in defaults.items() for arg in r.opt(node, name, name, default)]


def _layer_norm(r: Renderer, node: Node) -> list[str]:
    return [f"epsilon={r.sym(node, 'epsilon')}", *r.opt(node, "center", "center", True), *r.opt(node, "scale", "scale", True)]


def _pool(r: Renderer, node: Node) -> list[str]:
    return [r.sym(node, "pool"), *r.opt(node, "stride", "strides", None), *r.opt(node, "padding", "padding", "valid")]


def _normalize(r: Renderer, node: Node) -> list[str]:
    return [f"mean={literal(node.mean)}", f"variance={literal(node.variance)}"] if node.mean is not None else []


def _layer_scale(r: Renderer, node: Node, cur: str, dst: str, name: str, scope: Scope) -> list[Stmt]:
    r.helpers.add("LayerScale")
    return [call(f"{dst} = LayerScale(", [r.sym(node, "init"), f"name={name_expr(name)}"], f")({cur})")]


def _sepconv(r: Renderer, node: Node, cur: str, dst: str, name: str, scope: Scope) -> list[Stmt]:
    """One SeparableConv2D where keras.applications has one; its spatial conv, an
    activation between and its pointwise conv where segments or between ask for them; the
    helper that decides when the model is built where a param or argument chooses."""
    s, opt = r.sym, r.opt
    shared = [
        *opt(node, "stride", "strides", (1, 1)),
        *opt(node, "padding", "padding", "valid"),
        *opt(node, "dilation", "dilation_rate", (1, 1)),
    ]
    multiplier = opt(node, "depth_multiplier", "depth_multiplier", 1)
    if "segments" in node.refs or "between" in node.refs:  # decided when the model is built
        if node.dilation != (1, 1) or "dilation" in node.refs:
            w = node.where
            raise SpecError(
                Location(w.file, w.line, w.col, w.spec_path),
                "expected a sepconv whose segments and between are fixed where it is dilated, found a param or argument choosing them",
            )
        r.helpers.add(HELPER)
        args = [
            cur,
            s(node, "filters"),
            s(node, "kernel"),
            f"strides={s(node, 'stride')}",
            f"padding={s(node, 'padding')}",
            f"depth_multiplier={s(node, 'depth_multiplier')}",
            f"segments={s(node, 'segments')}",
            f"between={s(node, 'between')}",
            f"use_bias={s(node, 'bias')}",
            f"name={name_expr(name)}",
        ]
        return [call(f"{dst} = {HELPER}(", args, ")")]
    bias = opt(node, "bias", "use_bias", True)
    if node.segments == "depthwise" and node.between == "none":  # keras.applications' layer
        args = [s(node, "filters"), s(node, "kernel"), *shared, *multiplier, *bias, f"name={name_expr(name)}"]
        return [call(f"{dst} = layers.SeparableConv2D(", args, f")({cur})")]
    if node.segments == "depthwise":
        spatial = call(
            f"{dst} = layers.DepthwiseConv2D(",
            [s(node, "kernel"), *shared, *multiplier, "use_bias=False", f"name={name_expr(name + '_spatial')}"],
            f")({cur})",
        )
    else:
        channels = f"{cur}.shape[-1]" + (f" * {s(node, 'depth_multiplier')}" if multiplier else "")
        spatial = call(
            f"{dst} = layers.Conv2D(",
            [
                channels,
                s(node, "kernel"),
                *shared,
                f"groups={s(node, 'segments')}",
                "use_bias=False",
                f"name={name_expr(name + '_spatial')}",
            ],
            f")({cur})",
        )
    out = [spatial]
    if node.between != "none":
        out.append(call(f"{dst} = layers.Activation(", [s(node, "between"), f"name={name_expr(name + '_act')}"], f")({dst})"))
    out.append(
        call(f"{dst} = layers.Conv2D(", [s(node, "filters"), "(1, 1)", *bias, f"name={name_expr(name + '_pointwise')}"], f")({dst})")
    )
    return out


def _sepconv_parts(name: str, layers: dict[str, Any]) -> list[tuple[Any, dict[str, str]]]:
    """One SeparableConv2D, or its spatial and pointwise layers (see _sepconv)."""
    if name in layers:
        return [(layers[name], {"depthwise_kernel": "spatial", "pointwise_kernel": "pointwise", "bias": "bias"})]
    parts = [
        (f"{name}_spatial", {"kernel": "spatial", "bias": "spatial_bias"}),
        (f"{name}_pointwise", {"kernel": "pointwise", "bias": "bias"}),
    ]
    return [(layers[n], r) for n, r in parts if n in layers]


def _merge(function: str) -> Callable:
    """An emitter for a merge over named tensors: ``dst = layers.function([a, b], name=...)``."""
    return lambda r, node, cur, dst, name, scope: [call(f"{dst} = layers.{function}(", [cur, f"name={name_expr(name)}"], ")")]


def _resize(r: Renderer, node: Node, cur: str, dst: str, name: str, scope: Scope) -> list[Stmt]:
    """Keras's Resizing to the static height and width of the tensor ``like`` (TensorFlow's
    resize: half-pixel centres, no antialiasing)."""
    like = scope.tensors[node.like]
    args = [f"{like}.shape[1]", f"{like}.shape[2]", f"interpolation={r.sym(node, 'mode')}"]
    return r.layer("Resizing", args, cur, dst, name)


def _crop(r: Renderer, node: Node, cur: str, dst: str, name: str, scope: Scope) -> list[Stmt]:
    r.helpers.add("crop_margins")
    return r.layer("Cropping2D", [f"crop_margins({cur}, {scope.tensors[node.like]})"], cur, dst, name)


def _split(r: Renderer, node: Node, cur: str, dst: str, name: str, scope: Scope) -> list[Stmt]:
    """``a, b = keras.ops.split(x, 2, axis=-1)`` (sizes: at the running sums), no layer of its own."""
    if node.parts is not None:
        at = r.sym(node, "parts")
    elif "sizes" in node.refs:  # an argument: the running sums in code
        sizes = r.sym(node, "sizes")
        at = f"[sum({sizes}[: i + 1]) for i in range(len({sizes}) - 1)]"
    else:
        at = f"[{', '.join(str(sum(node.sizes[: i + 1])) for i in range(len(node.sizes) - 1))}]"
    return [call(f"{dst} = keras.ops.split(", [cur, at, "axis=-1"], ")")]


def _same_name(name: str, layers: dict[str, Any], node: Node) -> str | None:
    return name


@dataclass(frozen=True)
class KerasOp:
    """How the Keras backend renders one op.

    ``emit(renderer, node, cur, dst, name, scope)`` gives the statements; ``weights`` its
    weights: {Keras weight name: role} of its one layer, or (name, layers) -> [(layer,
    {weight name: role})] where it makes several (None: no weights); ``output(name,
    layers, node)`` the layer whose output is the node's (None: none of its own);
    ``fold_into`` the layer a batch norm after it folds into, as a suffix of its name
    (None: not a fold producer); ``helpers`` (name, template) of what the generated module
    defines when the emitter used ``name`` (the names are reserved)."""

    emit: Callable[..., list[Stmt]]
    weights: dict[str, str] | Callable | None = None
    output: Callable[[str, dict[str, Any], Node], str | None] = _same_name
    fold_into: str | None = None
    helpers: tuple[tuple[str, str], ...] = ()


KERNEL = {"kernel": "kernel", "bias": "bias"}
OPS: dict[str, KerasOp] = {
    "conv": KerasOp(_one("Conv2D", _conv), KERNEL, fold_into=""),
    "depthwise": KerasOp(_one("DepthwiseConv2D", _depthwise), KERNEL, fold_into=""),
    "sepconv": KerasOp(
        _sepconv,
        _sepconv_parts,
        lambda name, layers, node: name if name in layers else f"{name}_pointwise",
        fold_into="",  # templates/fold.py.j2 finds the pointwise layer of a split one
        helpers=((HELPER, "separable_conv.py.j2"),),
    ),
    "bn": KerasOp(_one("BatchNormalization", _bn), {r: r for r in ("gamma", "beta", "moving_mean", "moving_variance")}),
    "layer_norm": KerasOp(_one("LayerNormalization", _layer_norm), {"gamma": "gamma", "beta": "beta"}),
    "layer_scale": KerasOp(_layer_scale, {"gamma": "gamma"}, helpers=(("LayerScale", "layer_scale.py.j2"),)),
    "act": KerasOp(_one("Activation", lambda r, node: [r.sym(node, "kind")])),
    "identity": KerasOp(_one("Identity", lambda r, node: [])),
    "zero_pad": KerasOp(_one("ZeroPadding2D", lambda r, node: [r.sym(node, "padding")])),
    "rescale": KerasOp(_one("Rescaling", lambda r, node: [r.sym(node, "scale"), *r.opt(node, "offset", "offset", 0.0)])),
    "normalize": KerasOp(_one("Normalization", _normalize), {"mean": "mean", "variance": "variance", "count": "count"}),
    "maxpool": KerasOp(_one("MaxPooling2D", _pool)),
    "avgpool": KerasOp(_one("AveragePooling2D", _pool)),
    "global_avg_pool": KerasOp(_one("GlobalAveragePooling2D", lambda r, node: r.opt(node, "keepdims", "keepdims", False))),
    # channels_last: Keras flattens in (H, W, C) order, as the IR says
    "flatten": KerasOp(_one("Flatten", lambda r, node: [])),
    "dense": KerasOp(_one("Dense", lambda r, node: [r.sym(node, "units"), *r.opt(node, "bias", "use_bias", True)]), KERNEL, fold_into=""),
    "channel_dense": KerasOp(_one("Dense", lambda r, node: [r.sym(node, "units"), *r.opt(node, "bias", "use_bias", True)]), KERNEL),
    "dropout": KerasOp(_one("Dropout", lambda r, node: [r.sym(node, "rate")])),
    # stochastic depth as keras.applications' EfficientNet has it: one mask value per sample
    "drop_path": KerasOp(_one("Dropout", lambda r, node: [r.sym(node, "rate"), "noise_shape=(None, 1, 1, 1)"])),
    "conv_transpose": KerasOp(_one("Conv2DTranspose", _conv_transpose), KERNEL),
    "upsample": KerasOp(_one("UpSampling2D", lambda r, node: [r.sym(node, "factor"), *r.opt(node, "mode", "interpolation", "nearest")])),
    "global_max_pool": KerasOp(_one("GlobalMaxPooling2D", lambda r, node: r.opt(node, "keepdims", "keepdims", False))),
    "resize": KerasOp(_resize),
    "crop": KerasOp(_crop, helpers=(("crop_margins", "crop_margins.py.j2"),)),
    "add": KerasOp(_merge("add")),
    "multiply": KerasOp(_merge("multiply")),
    "concat": KerasOp(_merge("concatenate")),
    "split": KerasOp(_split, output=lambda name, layers, node: None),
    "residual": KerasOp(
        lambda r, node, cur, dst, name, scope: r.residual(node, dst, name, scope),
        output=lambda name, layers, node: name if node.use_shortcut else None,  # switched off by a param: no addition
    ),
    "gate": KerasOp(Renderer.gate),
    "branches": KerasOp(lambda r, node, cur, dst, name, scope: r.branches(node, dst, name, scope)),
    "repeat": KerasOp(Renderer.repeat),
    "call": KerasOp(Renderer.call_block),
}
RESERVED = frozenset(name for record in OPS.values() for name, _ in record.helpers)  # names the helpers define


BACKBONE_ARGS = [  # create_model's arguments of the backbone API (templates/backbone.py.j2)
    ("include_top", "False leaves the head out: the global pool and the layers after it, as keras.applications."),
    ("pooling", 'With include_top=False: None (the last map), "avg" or "max" (pooled).'),
    ("features_only", "A model with one output per feature tap (FEATURE_INFO)."),
    ("out_indices", "With features_only: the taps, by index into FEATURE_INFO (None: all)."),
]


def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(analysis: Analysis) -> str:
    return Renderer(analysis).render(environment())
