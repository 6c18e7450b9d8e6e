"""fusedops benchmark CLI: fused layers against eager PyTorch and torch.compile.

    python benchmarks/run.py                      # best device present, default settings
    python benchmarks/run.py --device cpu --ops conv_block --modes fwd --providers fusedops,compile
    python benchmarks/run.py --quick              # fewer rounds, smallest layers only
    python benchmarks/run.py --save               # update the committed results (make bench-save)

Prints one table per op (median ms, paired speed-up over eager, over torch.compile and over
the best baseline (the fastest of eager NCHW, eager channels_last and torch.compile), TFLOP/s,
GB/s, % of the roofline floor, peak memory, saved-for-backward bytes) and writes
``<device-slug>.json`` and a PNG plot of the speed-ups to ``benchmarks/results/local/``
(git-ignored), or with ``--save`` to ``benchmarks/results/``, where the committed results
are. Every provider's output is checked against eager before it is timed: a wrong result
stops the run. A provider that cannot run a dtype is skipped, saying why. Every option is
checked against its allowed values (``--help`` lists them): an unknown one exits with 2.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import math
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fusedops  # noqa: E402
from benchmarks import measure, providers, summarize, workloads  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
# Mixed precision: float32 modules and inputs, each step under torch.autocast to this dtype.
AUTOCAST_DTYPES = {"bfloat16-autocast": torch.bfloat16, "float16-autocast": torch.float16}
OPS = summarize.OP_ORDER  # whole models first, as the tables and the plot
MODES = ("fwd", "train")
RESULTS = ROOT / "benchmarks" / "results"  # the committed results: written only with --save
LOCAL_RESULTS = RESULTS / "local"  # git-ignored: where a plain run writes
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}


@dataclass(frozen=True)
class Precision:
    """How a job's tensors are typed: ``name`` as in the results (``float32``,
    ``bfloat16-autocast``), ``compute`` the dtype the layers compute in, ``autocast`` whether
    that comes from ``torch.autocast`` over float32 modules and inputs (``storage``)."""

    name: str
    compute: torch.dtype
    autocast: bool = False

    @property
    def storage(self) -> torch.dtype:
        return torch.float32 if self.autocast else self.compute

    @classmethod
    def named(cls, name: str) -> Precision:
        if name in AUTOCAST_DTYPES:
            return cls(name, AUTOCAST_DTYPES[name], autocast=True)
        return cls(name, DTYPES[name])


def device_slug(device: str) -> str:
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = "cpu-" + (_cpu_model() or platform.machine())
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _cpu_capability() -> str:
    """The vector ISA torch's CPU kernels use here (AVX2, AVX512, ...), with whether oneDNN has
    native bfloat16 kernels (``fusedops.backends.onednn_has_bfloat16``: AVX-512 BF16 or AMX on
    x86; result files before 2026-11-28 said yes for oneDNN's emulated bf16 on any AVX-512
    CPU): the same model name covers machines that differ in both."""
    bf16 = fusedops.backends.onednn_has_bfloat16()
    return f"{torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 {'yes' if bf16 else 'no'}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "not installed"


class Progress:
    """A one-line progress bar on stderr. While it is active (``with progress:``), whatever
    else is written to stderr (Python warnings, torch's log messages, skip notes) is printed
    on its own lines above the bar, which is then drawn again. Where stderr is not a terminal
    (a log file), each step is a line of its own instead, with the seconds since the start, and
    the last line says when the whole run ended (where a time-limited run spends its time)."""

    WIDTH = 30

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.label = total, 0, ""
        self.start = time.monotonic()
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self._shown = 0  # characters of the bar on the screen now
        self._saved = None

    def _draw(self) -> None:
        if not self.terminal:
            self.stream.write(f"[{self.done}/{self.total}] {self.label} (at {time.monotonic() - self.start:.0f} s)\n")
            self.stream.flush()
            return
        filled = int(self.WIDTH * self.done / max(1, self.total))
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} {self.label[:70]}"
        self._clear()
        self.stream.write(line)
        self.stream.flush()
        self._shown = len(line)

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def step(self, label: str) -> None:
        self.done += 1
        self.label = label
        self._draw()

    # stderr while the bar is shown: a file-like object
    def write(self, text: str) -> int:
        self._clear()
        self.stream.write(text)
        if self.terminal and text.endswith("\n") and self.done:
            self._draw()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ... of the real stream
        return getattr(self.stream, name)

    def __enter__(self):
        loggers = [logging.getLogger()] + [
            lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
        handlers = [h for lg in loggers for h in lg.handlers
                    if isinstance(h, logging.StreamHandler) and h.stream is self.stream]
        self._saved = (sys.stderr, handlers)
        sys.stderr = self
        for h in handlers:  # torch's loggers hold the stream itself
            h.setStream(self)
        return self

    def __exit__(self, *exc) -> None:
        saved_stderr, handlers = self._saved
        for h in handlers:
            h.setStream(self.stream)
        sys.stderr = saved_stderr
        if self._shown:
            self.stream.write("\n")
            self._shown = 0
        if not self.terminal and self.done:
            self.stream.write(f"[{self.done}/{self.total}] ended at {time.monotonic() - self.start:.0f} s\n")
        self.stream.flush()


class WrongOutput(Exception):
    """A provider's output differs from eager's: the run stops."""


def check_output(name: str, step, reference: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise WrongOutput if ``step``'s forward output differs from eager's beyond the dtype's tolerance."""
    out = step(0)
    err = (out.float() - reference.float()).abs().max().item() if out.numel() else 0.0
    scale = max(reference.float().abs().max().item(), 1.0) if reference.numel() else 1.0
    if not math.isfinite(err) or err > TOLERANCE[dtype] * scale:
        raise WrongOutput(f"{name}: output differs from eager by {err:.3g} (scale {scale:.3g}); not timed")


def fusedops_backend(provider: str) -> Optional[str]:
    """The fusedops backend a provider names (``fusedops-cpp``, ``fusedops-cpp-graph``), if any."""
    if not provider.startswith("fusedops-"):
        return None
    name = provider[len("fusedops-"):].removesuffix("-graph")
    return name if name in fusedops.backends.known_backends() else None


def cannot_run(provider: str, device: str, dtype: torch.dtype) -> Optional[str]:
    """Why a fusedops provider's backend cannot run ``dtype`` tensors on ``device`` (None if it can)."""
    name = fusedops_backend(provider)
    if name is None:
        return None
    probe = [torch.empty(0, device=device, dtype=dtype)]
    return "; ".join(fusedops.backends._REGISTRY[name].unsupported_reasons(probe)) or None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def bench_one(w, mode, precision: Precision, args, ceilings, skipped: List[dict]):
    """Time every provider of one workload in one mode; returns result rows. Providers that
    cannot run ``precision``'s dtype here are left out and listed in ``skipped`` with the reason."""
    torch._dynamo.reset()  # each job compiles afresh: no recompile limit reached across jobs
    device = args.device
    dtype, dtype_name = precision.compute, precision.name
    autocast = dtype if precision.autocast else None
    itemsize = torch.empty(0, dtype=precision.storage).element_size()

    def skip(provider: str, reason: str) -> None:
        if not any((s["provider"], s["dtype"], s["reason"]) == (provider, dtype_name, reason) for s in skipped):
            print(f"skipped {provider} ({dtype_name}): {reason}", file=sys.stderr)  # once; all at the end
        skipped.append({"layer": w.layer, "dtype": dtype_name, "mode": mode, "provider": provider, "reason": reason})

    provs = []
    for p in providers.make_providers(w, device, precision.storage, args.providers):
        if args.skip_providers and any(p.name.startswith(s) for s in args.skip_providers):
            continue
        reason = cannot_run(p.name, device, dtype)
        if reason is None:
            provs.append(p)
        else:
            skip(p.name, reason)
    shape = w.input_shape(args.batch)
    count = measure.rotation_count(math.prod(shape) * itemsize, device)
    inputs = providers.make_inputs(w, args.batch, device, precision.storage, count, mode)
    fwd = {p.name: providers.make_step(p, w, inputs, "fwd", autocast) for p in provs if p.graph_of is None}
    try:
        with torch.no_grad():
            reference = fwd["eager"](0)
    except RuntimeError as exc:  # torch itself has no kernel for this dtype here
        skip("every provider", f"eager PyTorch cannot run it: {_first_line(exc)}")
        return []
    for p in list(provs):
        if p.graph_of is not None:
            continue
        try:
            check_output(p.name, fwd[p.name], reference, dtype)
        except WrongOutput:
            raise
        except (RuntimeError, NotImplementedError) as exc:
            if p.name.startswith("fusedops"):
                raise  # a fusedops provider that claims the dtype must run it
            skip(p.name, _first_line(exc))
            provs = [q for q in provs if q.name != p.name and q.graph_of != p.name]
    steps = {}
    for p in provs:
        if mode == "fwd" and p.name in fwd:  # the step checked above is the one to time
            steps[p.name] = fwd[p.name]
            continue
        try:
            steps[p.name] = providers.make_step(p, w, inputs, mode, autocast)
        except RuntimeError as exc:  # e.g. a CUDA graph that cannot be captured
            skip(p.name, _first_line(exc))
    for step in steps.values():  # warm-up (compiles, autotunes, allocates)
        for i in range(2):
            step(i)
    measure.sync(device)
    calls = max(count, 5) if device == "cuda" else 1
    times = measure.interleaved(steps, device, args.rounds, calls)
    flops, nbytes = w.flops(args.batch, mode), w.bytes(args.batch, mode, itemsize)
    floor_ms = max(nbytes / (ceilings["copy_gbps"] * 1e9), flops / (ceilings["matmul_tflops"] * 1e12)) * 1e3
    best = best_baseline(times)
    rows = []
    for p in provs:
        if p.name not in steps:
            continue
        med = statistics.median(times[p.name])
        saved = None
        if mode == "train" and p.eager_autograd and w.op != "train_step":
            x = inputs[0].contiguous(memory_format=torch.channels_last) if p.channels_last else inputs[0]
            saved = measure.saved_bytes(p.module, x)
        peak = measure.peak_memory_mb(steps[p.name], device)
        rows.append({
            "op": w.op, "layer": w.layer, "shape": list(shape), "dtype": dtype_name,
            "mode": mode, "provider": p.name, "median_ms": round(med, 4),
            "speedup_vs_eager": round(measure.median_ratio(times["eager"], times[p.name]), 3),
            "speedup_vs_compile": (round(measure.median_ratio(times["compile"], times[p.name]), 3)
                                   if "compile" in times else None),
            "best_baseline": best, "speedup_vs_best": round(measure.median_ratio(times[best], times[p.name]), 3),
            "tflops": round(flops / (med * 1e-3) / 1e12, 4), "gbps": round(nbytes / (med * 1e-3) / 1e9, 2),
            "roofline_pct": round(100 * floor_ms / med, 1),
            "peak_mem_mb": None if math.isnan(peak) else round(peak, 1), "saved_bytes": saved,
        })
    return rows


def best_baseline(times: Dict[str, List[float]]) -> str:
    """The strongest thing a user could run instead: of the providers that are not fusedops and
    not CUDA-graph replays (eager NCHW, eager channels_last, torch.compile, ...), the one with
    the lowest median time in this job."""
    baselines = [n for n in times if not n.startswith("fusedops") and not n.endswith("-graph")]
    return min(baselines, key=lambda n: statistics.median(times[n]))


def print_table(op: str, rows, rounds: Optional[int] = None) -> None:
    text = summarize.table(rows, op, rounds)
    if text:
        print("\n" + text)


@functools.cache
def provider_names(device: str) -> List[str]:
    """Every provider a workload can have on ``device`` (those of a conv block, the most)."""
    return [p.name for p in providers.make_providers(workloads.CONV_LAYERS[0], device, torch.float32, None)]


def _split(value: str) -> List[str]:
    return [v.strip() for v in value.split(",")]


def _check_choices(parser, option: str, value: str, allowed) -> List[str]:
    """The comma list ``value`` of ``option``, each item one of ``allowed``, or exit 2 saying so."""
    items = _split(value)
    bad = [v for v in items if v not in allowed]
    if bad:
        parser.error(f"{option}: unknown value{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; "
                     f"allowed: {', '.join(allowed)} (comma-separated)")
    return items


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _layer_names(sep: str = "; ") -> str:
    return sep.join(w.layer for w in workloads.ALL)


def parse_args(argv=None):
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = argparse.ArgumentParser(
        description="fusedops benchmarks against eager PyTorch and torch.compile. Comma lists take the "
        "values listed; an unknown one is an error (exit status 2).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"layers (--layers takes parts of these names; vgg and resnet run on CPU with --full only):\n"
        f"  {_layer_names(chr(10) + '  ')}\n\n"
        "results: benchmarks/results/local/<device>.json and .png (git-ignored); --save writes them to\n"
        "benchmarks/results/, the committed ones.",
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default=default_device,
                        help=f"default: {default_device} here (cuda when a GPU is present)")
    parser.add_argument("--dtypes", default=None,
                        help=f"comma list of {', '.join([*DTYPES, *AUTOCAST_DTYPES])} (-autocast: float32 modules "
                        "and inputs, each step under torch.autocast to that dtype); default bfloat16,float32 on "
                        "CUDA, float32 on CPU. A provider that cannot run a dtype is skipped, saying why")
    parser.add_argument("--batch", type=_positive_int, default=None, help="default 256 on CUDA, 64 on CPU")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma list of {', '.join(OPS)} (default: all)")
    parser.add_argument("--layers", default=None,
                        help="comma list: only layers whose name contains one of these, or a layer's full "
                        "name for that layer alone (see the list below)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma list of {', '.join(MODES)} (default: both; train = forward + backward, "
                        "for whole models also the SGD step)")
    parser.add_argument("--providers", default=None,
                        help="comma list of provider name prefixes ('fusedops' for all of fusedops'); eager always "
                        f"runs. Here, on {default_device}: {', '.join(provider_names(default_device))}"
                        + ("" if default_device == "cuda" else "; on CUDA also compile-max-autotune, "
                           "<provider>-graph (CUDA-graph replays) and, for conv blocks, fusedops-triton-gather "
                           "(Triton with FUSEDOPS_TRITON_CHANNEL_RUNS=0) and fusedops-cuda-tiles (the cuda backend "
                           "with FUSEDOPS_CUDA_CHANNEL_RUNS=0)"))
    parser.add_argument("--skip-providers", default=None,
                        help="comma list of provider name prefixes to leave out (e.g. compile-max-autotune)")
    parser.add_argument("--rounds", type=_positive_int, default=None,
                        help="timed rounds per provider (default 15 CUDA, 7 CPU, 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="3 rounds and the tutorial layers only")
    parser.add_argument("--full", action="store_true", help="also the ImageNet-sized layers on CPU")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--save", action="store_true",
                       help="write the results to benchmarks/results/ (the committed ones; make bench-save)")
    where.add_argument("--out", default=None, help="write the results to this directory instead")
    where.add_argument("--no-save", action="store_true", help="print only; write no JSON or plot")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    dtypes = _check_choices(parser, "--dtypes", args.dtypes or ("bfloat16,float32" if args.device == "cuda"
                                                                else "float32"), [*DTYPES, *AUTOCAST_DTYPES])
    args.dtypes = [Precision.named(d) for d in dict.fromkeys(dtypes)]
    args.ops = _check_choices(parser, "--ops", args.ops, OPS)
    args.modes = _check_choices(parser, "--modes", args.modes, MODES)
    if args.layers is not None:
        args.layers = _split(args.layers)
        bad = [s for s in args.layers if not s or not any(s in w.layer for w in workloads.ALL)]
        if bad:
            parser.error(f"--layers: no layer name contains {', '.join(map(repr, bad))}; layers: {_layer_names()}")
    if args.providers is not None:
        names = provider_names(args.device)
        args.providers = _split(args.providers)
        bad = [s for s in args.providers if not s or not any(n.startswith(s) for n in names)]
        if bad:
            parser.error(f"--providers: no provider on {args.device} starts with {', '.join(map(repr, bad))}; "
                         f"providers: {', '.join(names)}")
    if args.skip_providers is not None:
        args.skip_providers = _split(args.skip_providers)
        if any("eager".startswith(s) for s in args.skip_providers):
            parser.error("--skip-providers: eager is the baseline of every ratio; it always runs")
    args.batch = args.batch or (256 if args.device == "cuda" else 64)
    args.rounds = args.rounds or (3 if args.quick else 15 if args.device == "cuda" else 7)
    args.out = None if args.no_save else Path(args.out) if args.out else RESULTS if args.save else LOCAL_RESULTS
    if not select_workloads(args):
        pool = "all layers" if args.device == "cuda" or args.full else "the CPU layers (vgg and resnet need --full)"
        parser.error(f"nothing to run: no workload of {pool} matches --ops {','.join(args.ops)}"
                     + (f" --layers {','.join(args.layers)}" if args.layers else "")
                     + ("" if not args.quick else " --quick (the tutorial layers only)"))
    return args


def select_workloads(args):
    pool = workloads.ALL if (args.device == "cuda" or args.full) else workloads.CPU_DEFAULT
    if args.quick:
        pool = [w for w in pool if w.layer.startswith(("mnist", "cifar conv", "mlp"))]
    chosen = [w for w in pool if w.op in args.ops and any(m in w.modes for m in args.modes)]
    if args.layers:
        # A layer's full name selects that layer alone ("cifar conv2 32->64 16x16", not its
        # no-pool variant); any other string, every layer whose name contains it.
        names = {w.layer for w in workloads.ALL}
        chosen = [w for w in chosen if any(s == w.layer if s in names else s in w.layer for s in args.layers)]
    rank = {op: i for i, op in enumerate(OPS)}
    return sorted(chosen, key=lambda w: rank[w.op])  # the tables' order: whole models first


def _grouped(skipped: List[dict]) -> dict:
    """``(provider, dtype, reason) -> ["layer mode", ...]`` in the order first skipped."""
    out: dict = {}
    for s in skipped:
        out.setdefault((s["provider"], s["dtype"], s["reason"]), []).append(f"{s['layer']} {s['mode']}")
    return out


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    chosen = select_workloads(args)
    jobs = [(w, m, d) for w in chosen for d in args.dtypes for m in args.modes if m in w.modes]
    ceilings = {d.name: measure.measure_ceilings(args.device, d.compute) for d in args.dtypes}
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU {_cpu_model()} ({_cpu_capability()})"
    print(f"device: {name} | torch {torch.__version__} | triton {_triton_version()} | batch {args.batch}"
          f" | fusedops backends here: {providers.fusedops_backends_for(args.device)}")
    print(f"ceilings: {ceilings}")
    sys.stdout.flush()
    rows, skipped = [], []
    with Progress(len(jobs)) as progress:
        for w, mode, precision in jobs:
            progress.step(f"{w.layer} {mode} {precision.name}")
            rows += bench_one(w, mode, precision, args, ceilings[precision.name], skipped)
    for op in OPS:
        print_table(op, rows, args.rounds)
    if skipped:
        print("\nskipped:")
        for (provider, dtype, reason), jobs in _grouped(skipped).items():
            print(f"  {provider} ({dtype}) on {len(jobs)} job{'s' if len(jobs) > 1 else ''} "
                  f"({', '.join(jobs[:3])}{', ...' if len(jobs) > 3 else ''}): {reason}")
    if args.out is None:
        print("\n--no-save: nothing written")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    slug = device_slug(args.device)
    result = {
        "device": name, "torch": torch.__version__, "triton": _triton_version(), "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "batch": args.batch, "rounds": args.rounds, "ceilings": ceilings, "rows": rows, "skipped": skipped,
    }
    json_path, png_path = args.out / f"{slug}.json", args.out / f"{slug}.png"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    written = [json_path]
    if rows and summarize.plot(rows, str(png_path), summarize.plot_title(result)):
        written.append(png_path)
    print()
    for path in written:
        print(f"wrote {_shown(path)}")
    if args.out == LOCAL_RESULTS:
        print(f"({_shown(LOCAL_RESULTS)} is git-ignored; `make bench-save` or `--save` updates the committed "
              f"{_shown(RESULTS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
