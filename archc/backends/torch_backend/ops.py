"""What a torch record of an op is made of (the records themselves: ``OPS`` in
:mod:`.render`, one per op, next to the emitters they name).

A record holds everything the torch backend knows about one op: the emitter (the
module expression), what the op does to the channels and rank the generated code
tracks, the attribute that holds a combinator's child sequence, the weight mapping
(role -> tensor of the module, and the layout changes to and from the neutral format),
the submodule a folded batch norm scales, whether its output is a fresh tensor that an
in-place activation after it may overwrite, and the helper templates its emitter may use.

Nothing here imports torch: the weight functions touch a module's tensors (or numpy
arrays) only when they are called, by :mod:`.weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import values as v
from .values import Channels, Lit, Sym, Value

# -- weights: role -> tensor, and the layouts (torch -> neutral = Keras) ----------------------


@dataclass(frozen=True)
class TorchWeights:
    """One op's weights in torch: ``tensors(module)`` -> role -> tensor (None: absent);
    ``to_neutral`` / ``from_neutral``: role -> the layout change (default: none)."""

    tensors: Callable[[Any], dict[str, Any]]
    to_neutral: dict[str, Callable] = field(default_factory=dict)
    from_neutral: dict[str, Callable] = field(default_factory=dict)


def conv_to_neutral(a, inst):
    return a.transpose(2, 3, 1, 0)  # (out, in/g, kh, kw) -> (kh, kw, in/g, out)


def conv_from_neutral(a, inst):
    return a.transpose(3, 2, 0, 1)


def depthwise_to_neutral(a, inst):
    """(C*dm, 1, kh, kw), output channel c*dm + m -> (kh, kw, C, dm)."""
    c = inst.input[-1]
    kh, kw = a.shape[-2:]
    return a.reshape(c, a.shape[0] // c, kh, kw).transpose(2, 3, 0, 1)


def depthwise_from_neutral(a, inst):
    kh, kw, c, dm = a.shape
    return a.transpose(2, 3, 0, 1).reshape(c * dm, 1, kh, kw)


def sepconv_spatial(to_neutral: bool) -> Callable:
    """A sepconv's spatial kernel: depthwise, or a grouped conv's (segments)."""

    def layout(a, inst):
        if inst.node.segments == "depthwise":
            return depthwise_to_neutral(a, inst) if to_neutral else depthwise_from_neutral(a, inst)
        return conv_to_neutral(a, inst) if to_neutral else conv_from_neutral(a, inst)

    return layout


def transpose(a, inst):
    return a.T


def module_weights(module) -> dict[str, Any]:
    return {"kernel": module.weight, "bias": module.bias}


def norm_weights(module) -> dict[str, Any]:
    return {"gamma": module.weight, "beta": module.bias}


CONV_WEIGHTS = TorchWeights(module_weights, {"kernel": conv_to_neutral}, {"kernel": conv_from_neutral})


# -- channel rules: (renderer, node, env, channels, rank) -> (channels, rank) after it --------------


def keep(r, node, env, ch, rank):
    return ch, rank


def to(name: str, new_rank: int | None = None) -> Callable:
    """Channels become the node's field ``name`` (a conv's filters)."""
    return lambda r, node, env, ch, rank: (r.value(node, name, env), rank if new_rank is None else new_rank)


def times(ch: Channels, factor: Value) -> Channels:
    """``ch * factor`` (a depthwise conv's output channels)."""
    if isinstance(factor, Lit) and factor.value == 1:
        return ch
    if isinstance(ch, Lit) and isinstance(factor, Lit):
        return Lit(ch.value * factor.value)
    return Sym(f"{term(ch)} * {term(factor)}")


def term(value: Channels) -> str:
    """A value as an operand of ``*`` or ``+``: parenthesised unless it is one name or number."""
    text = v.code(value)
    return text if text.isidentifier() or text.replace(".", "").isdigit() else f"({text})"


def same_label(plan, node, label: str, depth: int) -> str:
    return label


@dataclass(frozen=True)
class TorchOp:
    """How the torch backend renders one op.

    ``emit(renderer, node, env, ch, rank)`` gives the module expression; ``channels``
    what the node does to (channels, rank) as generated code sees them (None: nothing);
    ``attribute(plan, node, label, depth)`` the attribute that holds a child sequence;
    ``weights`` its weight mapping (None: it has no weights); ``fold_into`` the submodule
    whose output channels a batch norm after it scales ('' the module itself; None: not a
    fold producer); ``fresh_output`` whether its output is a new tensor that its own
    backward pass does not read (a callable (renderer, node, env) -> bool for a
    combinator); ``helpers`` the helper templates (``templates/helpers``) it may use."""

    emit: Callable
    channels: Callable | None = None
    attribute: Callable = same_label
    weights: TorchWeights | None = None
    fold_into: str | None = None
    fresh_output: bool | Callable = False
    helpers: tuple[str, ...] = ()
