"""Providers: the ways of running one workload that the benchmark compares.

``fusedops-auto`` (``fusedops.fuse`` of the eager module with automatic backend choice: what
a user gets), ``fusedops-<backend>`` (the same with each backend that runs on the device),
``fusedops-auto-channels_last`` (the fused model and its inputs in channels_last: automatic
choice sees the layout), on CUDA ``fusedops-cuda-channels_last`` (the same on the cuda
backend, whose kernels read channels_last input in runs of channels in place, where
``fusedops-cuda`` reads them from a channels_last copy of the NCHW input), ``eager``
(NCHW), ``eager-channels_last`` (with ``cudnn.benchmark=True`` on CUDA), ``compile``
(``torch.compile`` default), on CUDA ``compile-max-autotune``
(``mode="max-autotune-no-cudagraphs"``), ``<provider>-graph`` (CUDA-graph replay of
``eager`` and of each fusedops provider: small layers are launch-bound) and, for the conv
workloads, ``fusedops-triton-gather`` (the Triton backend with ``FUSEDOPS_TRITON_CHANNEL_RUNS=0``:
its kernels gather element by element instead of reading runs of channels) and
``fusedops-cuda-tiles`` (the cuda backend with ``FUSEDOPS_CUDA_CHANNEL_RUNS=0``: its tile
kernels, reading the NCHW input in place), to compare in the same run.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

import fusedops
from benchmarks.workloads import Workload
from fusedops import backends as fusedops_backends


@dataclass
class Provider:
    name: str
    module: nn.Module
    channels_last: bool = False
    cudnn_benchmark: bool = False
    eager_autograd: bool = True  # saved-for-backward bytes are measurable (no compiler in between)
    graph_of: Optional[str] = None  # CUDA-graph replay of this provider's step
    notes: List[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)  # environment variables set during each step


def fusedops_backends_for(device: str) -> List[str]:
    probe = [torch.empty(0, device=device)]
    return [
        name for name in fusedops.available_backends()
        if not fusedops_backends._REGISTRY[name].unsupported_reasons(probe)
    ]


def make_providers(workload: Workload, device: str, dtype: torch.dtype, wanted: Optional[List[str]]) -> List[Provider]:
    """Every provider of ``workload`` on ``device`` (filtered by ``wanted`` name prefixes)."""
    base = workload.build().to(device=device, dtype=dtype)
    out = [Provider("eager", base), Provider("fusedops-auto", fusedops.fuse(base))]  # automatic choice
    for b in fusedops_backends_for(device):
        fused = fusedops.fuse(base, backend=b)
        out.append(Provider(f"fusedops-{b}", fused))
    if workload.op != "linear":
        cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
        out.append(Provider("eager-channels_last", cl, channels_last=True, cudnn_benchmark=device == "cuda"))
        # The fused model fed channels_last inputs too (automatic choice sees the layout).
        out.append(Provider("fusedops-auto-channels_last", fusedops.fuse(copy.deepcopy(cl)), channels_last=True,
                            cudnn_benchmark=device == "cuda"))
        if device == "cuda" and "cuda" in fusedops_backends_for(device):
            # The cuda backend reads channels_last input in runs of channels in place.
            out.append(Provider("fusedops-cuda-channels_last", fusedops.fuse(copy.deepcopy(cl), backend="cuda"),
                                channels_last=True))
    out.append(Provider("compile", torch.compile(copy.deepcopy(base)), eager_autograd=False))
    if device == "cuda" and workload.op == "conv_block" and "triton" in fusedops_backends_for(device):
        out.append(Provider("fusedops-triton-gather", fusedops.fuse(base, backend="triton"),
                            env={"FUSEDOPS_TRITON_CHANNEL_RUNS": "0"}))
    if device == "cuda" and workload.op == "conv_block" and "cuda" in fusedops_backends_for(device):
        out.append(Provider("fusedops-cuda-tiles", fusedops.fuse(base, backend="cuda"),
                            env={"FUSEDOPS_CUDA_CHANNEL_RUNS": "0"}))
    if device == "cuda":
        out.append(
            Provider(
                "compile-max-autotune",
                torch.compile(copy.deepcopy(base), mode="max-autotune-no-cudagraphs"),
                eager_autograd=False,
            )
        )
        if workload.op != "train_step":
            graphed = [p for p in out if p.name == "eager" or (p.name.startswith("fusedops-") and not p.channels_last)]
            for p in graphed:
                out.append(Provider(f"{p.name}-graph", copy.deepcopy(p.module), graph_of=p.name, eager_autograd=False,
                                    env=p.env))
    if wanted:
        out = [p for p in out if p.name == "eager" or any(p.name.startswith(w) for w in wanted)]
    return out


def make_inputs(workload: Workload, batch: int, device: str, dtype: torch.dtype, count: int, mode: str):
    shape = workload.input_shape(batch)
    needs_grad = mode == "train" and workload.input_grad
    return [torch.randn(shape, device=device, dtype=dtype).requires_grad_(needs_grad) for _ in range(count)]


def _flag_context(provider: Provider):
    """A fresh context (a generator-based one cannot be entered twice) that sets the
    provider's backend flags and environment variables for one step."""
    stack = contextlib.ExitStack()
    if provider.cudnn_benchmark:
        stack.enter_context(_cudnn_benchmark())
    if provider.env:
        stack.enter_context(_environment(provider.env))
    return stack


@contextlib.contextmanager
def _environment(values: dict):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _cudnn_benchmark():
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def make_step(provider: Provider, workload: Workload, inputs, mode: str,
              autocast: Optional[torch.dtype] = None) -> Callable[[int], object]:
    """``step(i)``: one forward (no grad), forward+backward, or training step on input ``i``;
    with ``autocast``, the whole step under ``torch.autocast`` to that dtype (float32 modules
    and inputs, as mixed-precision training runs them)."""
    step = _make_step(provider, workload, inputs, mode, autocast)
    if autocast is not None:
        plain = step

        def step(i):
            with _autocast(inputs[0], autocast):
                return plain(i)
    if provider.graph_of is None:
        return step
    return _graphed(step)


def _autocast(like: torch.Tensor, dtype: Optional[torch.dtype]):
    return torch.autocast(like.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _make_step(provider: Provider, workload: Workload, inputs, mode: str,
               autocast: Optional[torch.dtype]) -> Callable[[int], object]:
    m = provider.module
    if provider.channels_last:
        inputs = [x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(x.requires_grad)
                  for x in inputs]
    n = len(inputs)

    if mode == "fwd":
        def step(i):
            with torch.no_grad(), _flag_context(provider):
                return m(inputs[i % n])
    elif workload.op == "train_step":
        opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
        target = torch.randint(0, 10, (inputs[0].shape[0],), device=inputs[0].device)

        def step(i):
            with _flag_context(provider):
                opt.zero_grad(set_to_none=False)
                loss = F.cross_entropy(m(inputs[i % n]).float(), target)
                loss.backward()
                opt.step()
            return loss
    else:
        with torch.no_grad(), _autocast(inputs[0], autocast):  # the output's dtype under autocast
            grad_output = torch.randn_like(m(inputs[0]))

        def step(i):
            with _flag_context(provider):
                out = m(inputs[i % n])
                out.backward(grad_output)
            return out
    return step


def _graphed(step: Callable[[int], object]) -> Callable[[int], object]:
    """Capture ``step(0)`` in a CUDA graph (after warm-up on a side stream); replay it.

    A graph holds only the memory it allocated while captured: the tensors it reads that
    ``step`` holds (its inputs, the gradient fed to backward, the optimizer's state) must stay
    alive as long as it replays, so the replay keeps ``step``. (Without it they were freed when
    ``make_step`` returned, and a replay read freed memory: an illegal memory access once a
    later capture's ``empty_cache`` gave the blocks back.)"""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step(0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(0)

    def replay(i):
        graph.replay()

    replay.captured_step = step  # keeps alive what the graph reads (see above)
    return replay
