"""Draw escapestat's package-level import graph, layer by layer (docs/import-graph.png).

Each box is a package (or top-level module) of the library, placed at its layer from
``[tool.importlinter]`` in pyproject.toml; each arrow an import between two of them,
counted over their modules by grimp (the graph import-linter checks). An upward arrow
would be a broken contract; there are none when ``lint-imports`` passes.

    python scripts/import_graph.py [OUT.png]
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import grimp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [  # top to bottom, as in pyproject.toml
    ["escapestat_cli"], ["report"], ["search", "sweep"], ["engine"], ["models"], ["config"],
    ["integrations"], ["monitor"], ["trackers"], ["stats", "theory"], ["table"],
    ["errors", "vocab"],
]


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "escapestat_cli":
        return "escapestat_cli"
    if len(parts) < 2 or parts[1].startswith("_"):
        return None  # the root package and its private helpers (_legacy)
    return parts[1]


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "import-graph.png"
    graph = grimp.build_graph("escapestat", "escapestat_cli")
    edges: Counter = Counter()
    for module in graph.modules:
        src = package_of(module)
        for imported in graph.find_modules_directly_imported_by(module):
            dst = package_of(imported)
            if src and dst and src != dst:
                edges[(src, dst)] += 1
    where = {}
    for row, names in enumerate(LAYERS):
        for col, name in enumerate(names):
            where[name] = ((col + 1) / (len(names) + 1), 1 - row / (len(LAYERS) - 1))
    fig, ax = plt.subplots(figsize=(7.5, 9))
    for (src, dst), count in edges.items():
        (x0, y0), (x1, y1) = where[src], where[dst]
        ax.annotate("", xy=(x1, y1 + 0.02), xytext=(x0, y0 - 0.02),
                    arrowprops={"arrowstyle": "-|>", "color": "red" if y1 > y0 else "#8899aa",
                                "lw": 0.4 + 0.15 * min(count, 12), "alpha": 0.6,
                                "shrinkA": 8, "shrinkB": 8,
                                "connectionstyle": "arc3,rad=0.12"})
    for name, (x, y) in where.items():
        ax.text(x, y, name, ha="center", va="center", fontsize=10, zorder=3,
                bbox={"boxstyle": "round,pad=0.35", "fc": "#eef3f8", "ec": "#335577"})
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.05, 1.05)
    ax.axis("off")
    ax.set_title("escapestat's layers: every import points down\n(arrow width ~ number of "
                 "module imports; from grimp, as lint-imports checks)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}: {len(edges)} package-to-package imports, "
          f"{sum(1 for (s, d) in edges if where[d][1] > where[s][1])} upward")


if __name__ == "__main__":
    main()
