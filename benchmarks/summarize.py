"""Print a results JSON of benchmarks/run.py as the markdown table the README quotes.

    python benchmarks/summarize.py benchmarks/results/cpu-amd-epyc.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def summarize(path: str) -> str:
    result = json.loads(open(path).read())
    table = defaultdict(dict)
    providers = []
    for r in result["rows"]:
        key = (r["layer"], r["dtype"], r["mode"])
        table[key][r["provider"]] = r
        if r["provider"] not in providers:
            providers.append(r["provider"])
    lines = [
        f"{result['device']}, torch {result['torch']}, batch {result['batch']}, commit {result['commit']}, "
        f"{result['date'][:10]}: median ms (speed-up over eager).",
        "",
        "| layer | dtype | mode | " + " | ".join(providers) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in providers) + " |",
    ]
    for (layer, dtype, mode), by_provider in table.items():
        cells = []
        for p in providers:
            r = by_provider.get(p)
            cells.append("-" if r is None else f"{r['median_ms']:.2f} ({r['speedup_vs_eager']:.2f}x)")
        lines.append(f"| {layer} | {dtype} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1]))
