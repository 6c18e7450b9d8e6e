"""Candidate block configs of the Triton conv-block kernels, timed on a GPU.

    python benchmarks/triton_tiles.py [--dtype bfloat16] [--layers "vgg,cifar conv2"] [--dry-run]

The launchers pick each kernel's block config from the problem sizes by rules
(``fusedops/triton/conv_block.py``: ``conv_block_configs`` and its siblings). This measures
the alternatives, so that the rules can be chosen by measurement: for each layer (the tutorial
layers at batch 256 and the VGG block 64->128 @112 at batch 64; 3x3, padding 1, ReLU,
MaxPool2d(2); NCHW input) and each kernel role (``fwd`` the forward; ``dx`` the input
gradient; ``dw`` the weight and bias gradient), it runs the role first with the launcher's own
config (``auto``), then with each candidate forced (``fusedops.triton.forced_tiles``), and
prints one markdown row per run as it goes: the config, its kernel path (``runs`` of channels,
with channels_last copies of NCHW tensors, or ``gather``: a forced BLOCK_K decides it as the
launcher's own does), the median time of a call (CUDA events around 10 back-to-back calls
queued behind a GPU sleep, so that the GPU's time is measured, not the host's; median of 15
such blocks after warm-up), the speed-up over ``auto``, and the largest difference from
``auto``'s outputs relative to their largest magnitude, computed on outputs allocated from
NaN-poisoned memory, so that an element a candidate never writes shows (the summation order
differs between configs; over ``--tolerance``, 2e-2 by default, or not finite, the row says
MISMATCH). The fastest matching row of each (layer, role) is marked with ``*``. A candidate
that fails (shared memory, registers, a compile error) is reported with its error and the
others go on; after an error that leaves the CUDA context unusable the run stops.

``--dry-run`` needs no GPU: it builds every candidate's launch plan on meta tensors, which
checks that the launchers accept it (a weight-gradient tile must divide the channel runs),
and prints the plans' configs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusedops.functional import conv_block_params  # noqa: E402
from fusedops.triton import conv_block as kernels  # noqa: E402
from fusedops.triton.forced_tiles import current, forced_tiles  # noqa: E402
from tests import gpu_memory  # noqa: E402


class Layer(NamedTuple):
    name: str
    batch: int
    cin: int
    cout: int
    hw: int


LAYERS = (Layer("mnist conv1 1->32 @28", 256, 1, 32, 28), Layer("mnist conv2 32->64 @14", 256, 32, 64, 14),
          Layer("cifar conv1 3->32 @32", 256, 3, 32, 32), Layer("cifar conv2 32->64 @16", 256, 32, 64, 16),
          Layer("vgg 64->128 @112", 64, 64, 128, 112))
ROLES = ("fwd", "dx", "dw")
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps). The input gradient's rows are input pixels (many),
# columns channels; the weight gradient's runs kernel has output channels for rows and input
# channels for columns. Larger tiles with 8 warps are what torch.compile's Triton conv template
# chose for the VGG layer (128 x 128 x 64).
GEMM_CANDIDATES = ((64, 64, 32, 4), (64, 32, 32, 4), (64, 128, 32, 4), (128, 64, 32, 4), (128, 64, 32, 8),
                   (128, 128, 32, 8), (64, 64, 64, 4), (128, 128, 64, 8))
# The forward: its tiles holding every pool tap of BLOCK_M // 4 outputs (TAP_ROWS, the launcher's
# own choice on tensor cores: one accumulator, so a plain conv's tiles fit), and two tap-loop
# tiles (BLOCK_M outputs, a GEMM per tap; 64 x 64 x 32 was the launcher's choice before).
FWD_CANDIDATES = (((128, 128, 32, 8), True), ((128, 128, 64, 8), True), ((128, 64, 32, 4), True),
                  ((128, 64, 32, 8), True), ((64, 64, 32, 4), True), ((64, 32, 16, 4), True),
                  ((64, 64, 32, 4), False), ((128, 64, 32, 8), False))
DW_CANDIDATES = ((64, 64, 32, 4), (64, 32, 32, 4), (32, 64, 32, 4), (64, 64, 64, 4), (64, 64, 32, 8),
                 (128, 64, 32, 8), (128, 128, 32, 8), (64, 16, 32, 4), (32, 32, 64, 4))


def _pow2_at_least(v: int) -> int:
    return max(16, 1 << max(0, v - 1).bit_length())


def candidates(role: str, layer: Layer, dtype: torch.dtype) -> List[dict]:
    """The configs to try for ``role`` on ``layer``: the candidate lists with tiles no larger
    than the problem needs (BLOCK_N up to the channels, BLOCK_K up to the reduction; the
    gathered weight gradient's BLOCK_M up to its rows), for the runs kernel only tiles that
    divide the channel counts; duplicates dropped."""
    k = 9  # 3x3
    runs_dw = kernels.conv_block_dw_runs_configs(layer.cin, layer.cout, dtype) is not None
    out = []
    listed = {"fwd": FWD_CANDIDATES, "dw": [(c, False) for c in DW_CANDIDATES]}.get(
        role, [(c, False) for c in GEMM_CANDIDATES])
    for (bm, bn, bk, warps), tap_rows in listed:
        if role == "fwd":
            bn, bk = min(bn, _pow2_at_least(layer.cout)), min(bk, _pow2_at_least(layer.cin * k))
        elif role == "dx":
            bn, bk = min(bn, _pow2_at_least(layer.cin)), min(bk, _pow2_at_least(layer.cout * k))
        elif runs_dw:
            if layer.cout % bm or layer.cin % bn:
                continue
        else:  # the gather: rows Cg*KH*KW, columns output channels, reduction over positions
            bm, bn = min(bm, _pow2_at_least(layer.cin * k)), min(bn, _pow2_at_least(layer.cout))
        config = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, **({"TAP_ROWS": True} if tap_rows else {}))
        if config not in out:
            out.append(config)
    return out


def _tensors(layer: Layer, dtype: torch.dtype, device: str):
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(layer.batch, layer.cin, layer.hw, layer.hw, generator=gen).to(device=device, dtype=dtype)
    w = (torch.randn(layer.cout, layer.cin, 3, 3, generator=gen) / (layer.cin * 9) ** 0.5).to(device, dtype)
    b = torch.randn(layer.cout, generator=gen).to(device=device, dtype=dtype)
    return x, w, b


def role_call(role: str, layer: Layer, dtype: torch.dtype, device: str) -> Callable[[], List[torch.Tensor]]:
    """A call of ``role``'s launch on ``layer``'s tensors, returning its outputs."""
    x, w, b = _tensors(layer, dtype, device)
    p = conv_block_params(3, padding=1)
    y, off = kernels.forward(x, w, b, p)
    g = torch.randn(y.shape, generator=torch.Generator(device="cpu").manual_seed(1)).to(device, dtype)
    if role == "fwd":
        return lambda: list(kernels.forward(x, w, b, p))
    mask = [True, False, False] if role == "dx" else [False, True, True]
    return lambda: [t for t in kernels.backward(g, x, w, off, p, mask) if t.numel()]


SLEEP_CYCLES = 5_000_000  # about 2.5 ms of GPU clock: longer than the host takes to queue 10 calls


def time_ms(fn: Callable[[], object], calls: int = 10, blocks: int = 15) -> float:
    """Median over ``blocks`` of the CUDA-event time of ``calls`` back-to-back calls, per call.
    Each block is queued behind a GPU sleep, so that the events time the GPU's work, not the
    host's launches (the tutorial layers' kernels take tens of microseconds, about the host
    time of a call)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(blocks):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(SLEEP_CYCLES)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def difference(got: List[torch.Tensor], want: List[torch.Tensor]) -> float:
    """Largest |got - want| over the float outputs, relative to want's largest magnitude; inf
    where either holds a NaN or an infinity (none is expected from these inputs, and an output
    element a kernel never wrote reads as NaN: the outputs are allocated from poisoned memory)."""
    worst = 0.0
    for a, r in zip(got, want):
        if not r.is_floating_point():
            continue  # the offsets: a near tie may go to another tap when the sums round apart
        a, r = a.float(), r.float()
        if not (a.isfinite().all() and r.isfinite().all()):
            return float("inf")
        scale = r.abs().max().item() or 1.0
        worst = max(worst, (a - r).abs().max().item() / scale)
    return worst


def planned_launch(role: str, layer: Layer, dtype: torch.dtype, config: Optional[dict]):
    """The launch the launchers plan for ``role`` on ``layer`` with ``config`` forced (None:
    their own config), built on meta tensors: nothing is allocated, compiled or launched."""
    x = torch.empty(layer.batch, layer.cin, layer.hw, layer.hw, device="meta", dtype=dtype)
    w = torch.empty(layer.cout, layer.cin, 3, 3, device="meta", dtype=dtype)
    b = torch.empty(layer.cout, device="meta", dtype=dtype)
    p = conv_block_params(3, padding=1)
    with forced_tiles(**({role: config} if config else {})):
        if role == "fwd":
            return kernels._forward_plan(x, w, b, p, current()).launch
        g = torch.empty(layer.batch, layer.cout, layer.hw // 2, layer.hw // 2, device="meta", dtype=dtype)
        off = torch.empty(g.shape, device="meta", dtype=torch.int8)
        mask = [True, False, False] if role == "dx" else [False, True, True]
        plan = kernels._backward_plan(g, x, w, off, p, mask, current())
        return plan.dx if role == "dx" else plan.dw


def path(launch) -> str:
    """The kernel path of a planned launch: ``runs`` (runs of channels, with channels_last
    copies of NCHW tensors) or ``gather``. A forced BLOCK_K decides it for the forward and the
    input gradient as the launchers' own does."""
    runs = launch.kwargs.get("CG_RUN") or launch.kwargs.get("CO_RUN") or launch.kwargs.get("CI_RUN")
    return "runs" if runs else "gather"


def _cuda_lost() -> bool:
    """Whether the CUDA context is unusable (a sticky error such as an illegal address)."""
    try:
        torch.cuda.synchronize()
        return False
    except RuntimeError:
        return True


def _label(config: Optional[dict]) -> str:
    if config is None:
        return "auto"
    return (f"{config['BLOCK_M']}x{config['BLOCK_N']}x{config['BLOCK_K']} w{config['num_warps']}"
            + (" taps" if config.get("TAP_ROWS") else ""))


def measure(layer: Layer, role: str, dtype: torch.dtype, tolerance: float) -> Tuple[List[str], bool]:
    """Markdown rows of ``role`` on ``layer`` (``auto`` and each candidate), and whether the
    CUDA context was lost (then the rows end there)."""
    call = role_call(role, layer, dtype, "cuda")
    want = call()
    auto_ms = time_ms(call)
    results: List[Dict] = [dict(config=None, ms=auto_ms, diff=0.0, error=None)]
    lost = False
    for config in candidates(role, layer, dtype):
        try:
            with forced_tiles(**{role: config}):
                gpu_memory.poison(gpu_memory.PATTERNS["nan"], gpu_memory.nbytes(*want), torch.device("cuda"))
                got = call()
                diff = difference(got, want)
                ms = time_ms(call)
            results.append(dict(config=config, ms=ms, diff=diff, error=None))
        except Exception as exc:  # a config that does not compile or launch: report it, go on
            text = str(exc).splitlines()[0][:80] if str(exc) else ""
            results.append(dict(config=config, ms=None, diff=None, error=f"{type(exc).__name__}: {text}"))
            if _cuda_lost():
                lost = True
                results[-1]["error"] += " (CUDA context lost: the run stops here)"
                break
    ok = [r for r in results if r["ms"] is not None and r["diff"] <= tolerance]
    best = min(ok, key=lambda r: r["ms"]) if ok else None
    rows = []
    for r in results:
        where = f"| {layer.name} | {role} | {_label(r['config'])}"
        kind = path(planned_launch(role, layer, dtype, r["config"]))
        if r["error"]:
            rows.append(f"{where} | {kind} | failed | | | {r['error']} |")
            continue
        mark = " *" if r is best else ""
        verdict = "MISMATCH" if r["diff"] > tolerance else ""
        rows.append(f"{where}{mark} | {kind} | {r['ms']:.4f} | {auto_ms / r['ms']:.2f}x | {r['diff']:.1e} | "
                    f"{verdict} |")
    return rows, lost


def dry_run(layers, dtype: torch.dtype) -> int:
    """Every candidate's plan built on meta tensors (no GPU, nothing launched or compiled);
    the configs the plans would launch printed. 1 if a candidate is refused or planned with
    another config."""
    failures = 0
    for layer in layers:
        for role in ROLES:
            for config in candidates(role, layer, dtype):
                try:
                    launch = planned_launch(role, layer, dtype, config)
                    used = {k: launch.kwargs[k] for k in config}
                    status = "ok" if used == config else f"PLANNED {used}"
                except Exception as exc:  # a refused config (ValueError) or a launcher failing on it
                    status = f"REFUSED {type(exc).__name__}: {exc}"
                failures += status != "ok"
                print(f"{layer.name} {role} {_label(config)}: {status}")
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--layers", default="", help="comma list of parts of layer names (default: all)")
    parser.add_argument("--tolerance", type=float, default=2e-2)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    parts = [s.strip() for s in args.layers.split(",") if s.strip()]
    layers = [ly for ly in LAYERS if not parts or any(s in ly.name for s in parts)]
    if not layers:
        parser.error(f"--layers {args.layers!r} selects none of: " + ", ".join(ly.name for ly in LAYERS))
    if args.dry_run:
        return dry_run(layers, dtype)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device (--dry-run checks the candidates without one)")
    torch.backends.cudnn.allow_tf32 = True  # float32 as TF32, as torch's conv by default
    print(f"Triton conv-block tiles, {args.dtype}, {torch.cuda.get_device_name()}; ms per call, "
          "speed-up over the launcher's own config (auto), largest difference from auto's outputs", flush=True)
    # The table row by row, so that a run stopped by a time limit keeps what it measured.
    print("| layer | role | config | path | ms | vs auto | difference | |\n"
          "| --- | --- | --- | --- | ---: | ---: | ---: | --- |", flush=True)
    for layer in layers:
        for role in ROLES:
            rows, lost = measure(layer, role, dtype, args.tolerance)
            print("\n".join(rows), flush=True)
            if lost:
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
