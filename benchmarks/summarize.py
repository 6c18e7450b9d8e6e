"""Read the results of benchmarks/run.py: the terminal table, the PNG plot, the README table.

    python benchmarks/summarize.py benchmarks/results/cpu-amd-epyc.json             # README table
    python benchmarks/summarize.py benchmarks/results/local/cpu-amd-epyc.json --table
    python benchmarks/summarize.py results.json --plot results.png                  # redraw the plot

Rows are ordered the same way everywhere: whole models first, then conv blocks, then linear
layers, each in the order the workloads are defined (benchmarks/workloads.py).

Speed-ups are paired: each provider is timed in the same rounds as eager (interleaved), and
its speed-up is the median over the rounds of that round's eager time / its time. That is
robust to the machine drifting during a run, and it is not the ratio of the two median times
the table prints beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Sequence

# Order and titles of the ops in tables and plots: what users care about first.
OP_ORDER = ("train_step", "conv_block", "linear")
OP_TITLES = {"train_step": "whole model", "conv_block": "conv block", "linear": "linear"}
SPEEDUP_NOTE = (
    "paired {columns}: the median over {rounds} rounds of (baseline's time / this provider's time)\n"
    "in the same round (baseline: {baselines}), so not exactly the ratio of the median ms"
)
BEST_NOTE = (
    "best baseline: of eager NCHW, eager channels_last and torch.compile (every provider that is not\n"
    "fusedops nor a CUDA-graph replay), the one with the lowest median time in that job"
)
PLOT_AXIS_LABEL = "speed-up over eager PyTorch (median of per-round time ratios; > 1 is faster)"
# Left out of the plot (they stay in the table and the JSON): the reference backend is the
# oracle, not a kernel, and CUDA-graph replays double the bars of every provider.
PLOT_EXCLUDES = ("fusedops-reference",)
PLOT_EXCLUDED_SUFFIXES = ("-graph",)


def ordered(rows: Sequence[dict]) -> List[dict]:
    """``rows`` sorted by op (OP_ORDER), keeping the run's order within an op."""
    rank = {op: i for i, op in enumerate(OP_ORDER)}
    return sorted(rows, key=lambda r: rank.get(r["op"], len(rank)))


def groups(rows: Sequence[dict]) -> List[tuple]:
    """The distinct ``(op, layer, dtype)`` of ``rows`` in table order."""
    out: List[tuple] = []
    for r in ordered(rows):
        key = (r["op"], r["layer"], r["dtype"])
        if key not in out:
            out.append(key)
    return out


# ---- the terminal table ----------------------------------------------------------------


def _speedup(v) -> Optional[str]:
    return None if v is None else f"{v:.2f}x"


def _saved_mb(r) -> Optional[str]:
    return None if r.get("saved_bytes") is None else f"{r['saved_bytes'] / 1e6:.2f}"


def _images_per_s(r) -> Optional[str]:
    if r["op"] != "train_step" or not r["median_ms"]:
        return None
    return f"{r['shape'][0] / (r['median_ms'] * 1e-3):,.0f}"


# (header line 1, header line 2, width, cell): a column is left out when no row has a value.
COLUMNS = [
    ("", "mode", -5, lambda r: r["mode"]),
    ("", "provider", -24, lambda r: r["provider"]),
    ("median", "ms", 9, lambda r: f"{r['median_ms']:.3f}"),
    ("paired", "vs eager", 9, lambda r: _speedup(r.get("speedup_vs_eager"))),
    ("paired", "vs compile", 11, lambda r: _speedup(r.get("speedup_vs_compile"))),
    ("paired", "vs best", 8, lambda r: _speedup(r.get("speedup_vs_best"))),
    ("", "TFLOP/s", 7, lambda r: f"{r['tflops']:.3f}"),
    ("", "GB/s", 6, lambda r: f"{r['gbps']:.1f}"),
    ("", "roof%", 5, lambda r: f"{r['roofline_pct']:.1f}"),
    ("peak", "MB", 7, lambda r: None if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.1f}"),
    ("saved", "MB", 7, _saved_mb),
    ("", "img/s", 8, _images_per_s),
]


def _cell(text: Optional[str], width: int) -> str:
    text = "-" if text is None else text
    return f"{text[:-width]:<{-width}}" if width < 0 else f"{text:>{width}}"


def table(rows: Sequence[dict], op: str, rounds: Optional[int] = None) -> str:
    """The rows of ``op`` as a text table at most 120 columns wide: a heading line per layer
    and dtype, one line per mode and provider; columns no row has a value for are left out."""
    rows = [r for r in ordered(rows) if r["op"] == op]
    if not rows:
        return ""
    columns = [c for c in COLUMNS if any(c[3](r) is not None for r in rows)]
    top = "  " + " ".join(_cell(c[0], c[2]) for c in columns)
    header = "  " + " ".join(_cell(c[1], c[2]) for c in columns)
    lines = [f"== {OP_TITLES.get(op, op)} ({op}) ==", top.rstrip(), header, "  " + "-" * (len(header) - 2)]
    for _, layer, dtype in groups(rows):
        lines.append(f"{layer} | {dtype}" + _best_baselines(rows, layer, dtype))
        for r in rows:
            if (r["layer"], r["dtype"]) == (layer, dtype):
                lines.append("  " + " ".join(_cell(c[3](r), c[2]) for c in columns))
    paired = [c[1] for c in columns if c[1].startswith("vs ")]
    if paired:
        baselines = ", ".join(name[3:] for name in paired)
        lines.append(SPEEDUP_NOTE.format(columns=", ".join(paired), rounds=rounds or "the timed",
                                         baselines=baselines))
        if "vs best" in paired:
            lines.append(BEST_NOTE)
    return "\n".join(lines)


def _best_baselines(rows: Sequence[dict], layer: str, dtype: str) -> str:
    """' | best baseline: fwd eager-channels_last, train compile' for a group's heading line."""
    best = {r["mode"]: r["best_baseline"] for r in rows
            if (r["layer"], r["dtype"]) == (layer, dtype) and r.get("best_baseline")}
    return " | best baseline: " + ", ".join(f"{m} {b}" for m, b in best.items()) if best else ""


# ---- the plot --------------------------------------------------------------------------


def _plotted(provider: str) -> bool:
    return (provider != "eager" and provider not in PLOT_EXCLUDES
            and not any(provider.endswith(s) for s in PLOT_EXCLUDED_SUFFIXES))


def plot(rows: Sequence[dict], path: str, title: str, dpi: int = 100) -> bool:
    """One figure: a panel per mode (forward, training), a row per layer in table order (whole
    models first), a bar per provider from 1x to its speed-up over eager, the value printed
    on it, at ``dpi`` dots per inch. Returns False (saying why) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return False
    rows = [r for r in ordered(rows) if _plotted(r["provider"])]
    modes = [m for m in ("fwd", "train") if any(r["mode"] == m for r in rows)]
    modes += sorted({r["mode"] for r in rows} - set(modes))
    keys = groups(rows)
    names: List[str] = []
    for r in rows:
        if r["provider"] not in names:
            names.append(r["provider"])
    several_dtypes = len({k[2] for k in keys}) > 1
    value: Dict[tuple, float] = {(r["op"], r["layer"], r["dtype"], r["mode"], r["provider"]): r["speedup_vs_eager"]
                                 for r in rows}
    bar, gap = 0.8 / max(1, len(names)), 0.2
    height = len(keys) * (len(names) * 0.17 + 0.2) + 1.6
    fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(6.0 * max(1, len(modes)) + 2.0, height),
                             sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    values = [v for v in value.values() if v and v > 0] or [1.0]
    low, high = min(min(values), 1.0) / 1.5, max(max(values), 1.0) * 1.6
    for ax, mode in zip(axes[0], modes):
        for k, name in enumerate(names):
            labelled = False
            for i, key in enumerate(keys):
                v = value.get((*key, mode, name))
                if v is None or v <= 0:
                    continue
                y = i + (k - (len(names) - 1) / 2) * bar
                ax.barh(y, v - 1.0, left=1.0, height=bar * 0.9, color=colors[k % len(colors)],
                        label=None if labelled else name)
                labelled = True
                ax.text(v * (1.03 if v >= 1 else 1 / 1.03), y, f"{v:.2f}x", va="center",
                        ha="left" if v >= 1 else "right", fontsize=7)
        ax.axvline(1.0, color="black", linewidth=0.9)
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ticks = [t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64) if low <= t <= high]
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title({"fwd": "forward (no grad)", "train": "training (forward + backward)"}.get(mode, mode),
                     fontsize=10)
        ax.set_xlabel(PLOT_AXIS_LABEL, fontsize=8)
        ax.grid(axis="x", which="major", alpha=0.3)
        for i, key in enumerate(keys):  # a rule and a title where an op's rows begin
            if i == 0 or key[0] != keys[i - 1][0]:
                if i:
                    ax.axhline(i - 0.5, color="grey", linewidth=0.8)
                if ax is axes[0][0]:
                    ax.text(low * 1.05, i - 0.5 + 0.05, OP_TITLES.get(key[0], key[0]), va="top", ha="left",
                            fontsize=8, style="italic", color="dimgrey")
    axes[0][0].set_yticks(range(len(keys)))
    axes[0][0].set_yticklabels([f"{layer} ({dtype})" if several_dtypes else layer for _, layer, dtype in keys],
                               fontsize=8)
    axes[0][0].set_ylim(len(keys) - 0.5 + gap, -0.5 - gap)  # first row at the top
    handles, labels = [], []
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.38 / height),
               ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return True


# ---- the README table ------------------------------------------------------------------


def summarize(path: str) -> str:
    """A results JSON as the markdown table the README quotes."""
    with open(path) as f:
        result = json.load(f)
    table_rows: Dict[tuple, Dict[str, dict]] = {}
    providers: List[str] = []
    for r in ordered(result["rows"]):
        table_rows.setdefault((r["layer"], r["dtype"], r["mode"]), {})[r["provider"]] = r
        if r["provider"] not in providers:
            providers.append(r["provider"])
    # Runs from before the best-baseline column have no "best_baseline" in their rows.
    with_best = any(r.get("best_baseline") for r in result["rows"])
    extra = " | best baseline | fusedops vs best" if with_best else ""
    extra_align = " | --- | ---" if with_best else ""
    lines = [
        f"{result['device']}, torch {result['torch']}, batch {result['batch']}, commit {result['commit']}, "
        f"{result['date'][:10]}: median ms (speed-up over eager: median of per-round ratios)"
        + ("; the best baseline is the fastest of eager NCHW, eager channels_last and torch.compile, "
           "and fusedops' speed-up over it is paired the same way." if with_best else "."),
        "",
        "| layer | dtype | mode | " + " | ".join(providers) + extra + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in providers) + extra_align + " |",
    ]
    for (layer, dtype, mode), by_provider in table_rows.items():
        cells = []
        for p in providers:
            r = by_provider.get(p)
            cells.append("-" if r is None else f"{r['median_ms']:.2f} ({r['speedup_vs_eager']:.2f}x)")
        best = next((r for r in by_provider.values() if r.get("best_baseline")), None)
        if best is not None:
            fused = [by_provider[p] for p in providers if p.startswith("fusedops") and p in by_provider]
            cells.append(best["best_baseline"])
            cells.append(", ".join(f"{r['provider'][len('fusedops-'):]} {r['speedup_vs_best']:.2f}x" for r in fused))
        lines.append(f"| {layer} | {dtype} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print or plot a results JSON of benchmarks/run.py.")
    parser.add_argument("json", help="a results JSON written by benchmarks/run.py")
    parser.add_argument("--table", action="store_true", help="print the terminal tables instead of the markdown one")
    parser.add_argument("--plot", metavar="PNG", help="(re)draw the plot of the results into PNG")
    args = parser.parse_args(argv)
    if args.plot:
        with open(args.json) as f:
            result = json.load(f)
        if not plot(result["rows"], args.plot, plot_title(result)):
            return 1
        print(f"wrote {args.plot}")
        return 0
    if args.table:
        with open(args.json) as f:
            result = json.load(f)
        print("\n\n".join(t for t in (table(result["rows"], op, result.get("rounds")) for op in OP_ORDER) if t))
        return 0
    print(summarize(args.json))
    return 0


def plot_title(result: dict) -> str:
    """The plot's title: device, torch, batch, commit and date of a results JSON."""
    return (f"fusedops on {result['device']}: speed-up over eager PyTorch, batch {result['batch']}, "
            f"torch {result['torch']}, commit {result['commit']}, {result['date'][:10]}")


if __name__ == "__main__":
    sys.exit(main())
