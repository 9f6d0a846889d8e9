"""An example project-local plugin pass: load it from a recipe with

    plugins: [../passes/name_nodes.py]
    passes: [name-nodes]

TensorRT layer names, lint findings and per-node precision rules all refer to ONNX node names;
graphs from some tools leave nodes unnamed. This pass gives each unnamed node a stable name.
"""

from __future__ import annotations

from collections import Counter

import onnx_graphsurgeon as gs

from trtopt import Pass, PassContext, PassOptions, register_pass


@register_pass("name-nodes")
class NameNodes(Pass):
    """Name every unnamed node `<prefix><OpType>_<n>`, numbered per op type in graph order."""

    class Options(PassOptions):
        prefix: str = ""
        """Text put before every generated name."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        taken = {node.name for node in graph.nodes if node.name}
        counts: Counter[str] = Counter()
        for node in graph.nodes:
            while not node.name:
                candidate = f"{self.options.prefix}{node.op}_{counts[node.op]}"
                counts[node.op] += 1
                if candidate not in taken:
                    node.name = candidate
                    taken.add(candidate)
        return graph
