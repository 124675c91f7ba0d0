"""archc's multiply-adds equal torch.utils.flop_counter's count of the generated torch
model (one multiply-add is two flops), for every bundled spec and for each of its
outputs: the model runs on the meta device (no memory, no arithmetic), and each output's
share is counted on the traced graph with everything that output does not need removed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from bundled import buildable

from archc.api import load
from archc.codegen.backend import get

torch = pytest.importorskip("torch")
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = buildable(sorted([*ROOT.glob("specs/*.yaml"), *ROOT.glob("examples/*.yaml")]))  # the torch model counts


def torch_model(analysis, tmp_path: Path):
    path = tmp_path / f"{analysis.net.name}_torch.py"
    path.write_text(get("torch").render(analysis))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with torch.device("meta"):
        return module.create_model().eval()


def flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops()


def per_output(model, x) -> dict[str, int]:
    """Flops of each output alone: the model traced to aten ops, then for each output
    the graph cut down to what it needs."""
    from torch.utils._pytree import tree_flatten

    traced = make_fx(lambda x: model(x))(x)
    result = model(x)
    names, _ = tree_flatten({name: name for name in result} if isinstance(result, dict) else "output")
    found = {}
    for i, name in enumerate(names):
        graph = torch.fx.Graph()
        leaves, _ = tree_flatten(graph.graph_copy(traced.graph, {}))
        graph.output(leaves[i])
        graph.eliminate_dead_code()
        found[name] = flops(torch.fx.GraphModule(traced, graph), x)
    return found


@pytest.mark.parametrize("spec", BUNDLED, ids=lambda s: s.stem)
def test_macs_equal_the_flop_counters(spec, tmp_path):
    a = load(spec)
    model = torch_model(a, tmp_path)
    x = torch.empty(1, a.net.input[2], *a.net.input[:2], device="meta")
    with torch.device("meta"):
        assert flops(model, x) == 2 * a.total.macs
        if len(a.outputs) > 1:
            counted = per_output(model, x)
            assert counted == {name: 2 * c.macs for name, c in a.output_counts.items()}
