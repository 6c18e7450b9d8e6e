"""Fused modules called from several Python threads at once, and across intra-op thread counts.

The cpp conv kernels split work with at::parallel_for, keep per-thread partial sums of
grad_weight / grad_bias (sized by the thread count of the call) and thread_local scratch
buffers (csrc/cpu/conv_block_*.cpp). Here: several Python threads run forward and backward of
the same modules on their own inputs, with intra-op parallelism on, and must get exactly what
serial calls get; and calls between ``torch.set_num_threads`` changes must match the
reference each time, and repeat bit for bit at the same thread count.

Gradients come from ``torch.autograd.grad`` (per call), not ``.backward()``: accumulating
into the shared parameters' ``.grad`` from several threads is racy by nature.
"""

import threading

import pytest
import torch

import fusedops
from fusedops import backends

THREADS = 4
ITERATIONS = 6

# (name, module factory, input shape): the cpp conv kernel's paths (im2col on short rows, on
# long rows, with overlapping pool windows and groups; the direct convolution of first layers,
# with and without an input gradient; Winograd) and the linear kernel.
MODULES = [
    ("conv_im2col", lambda b: fusedops.FusedConvBlock(17, 6, 3, padding=1, backend=b), (3, 17, 14, 14)),
    ("conv_long_rows", lambda b: fusedops.FusedConvBlock(17, 4, 3, padding=1, backend=b), (2, 17, 6, 40)),
    ("conv_direct", lambda b: fusedops.FusedConvBlock(3, 8, 3, padding=1, backend=b), (3, 3, 14, 14)),
    ("conv_direct_wide", lambda b: fusedops.FusedConvBlock(6, 16, 5, backend=b), (3, 6, 14, 14)),
    ("conv_direct_first_layer", lambda b: fusedops.FusedConvBlock(3, 8, 3, padding=1, backend=b), (3, 3, 14, 14)),
    (
        "conv_overlap_groups",
        lambda b: fusedops.FusedConvBlock(4, 6, 3, stride=2, padding=1, groups=2, pool_kernel_size=3, pool_stride=2,
                                          backend=b),
        (3, 4, 17, 17),
    ),
    ("conv_winograd", lambda b: fusedops.FusedConvBlock(8, 8, 3, padding=1, backend=b), (4, 8, 10, 10)),
    ("linear", lambda b: fusedops.FusedLinear(24, 16, activation="gelu", backend=b), (12, 24)),
]
IDS = [m[0] for m in MODULES]
# Modules called without an input gradient, as a network's first layer is (its input is the
# data): the cpp kernel's weight gradient from the pooled gradients alone.
NO_INPUT_GRAD = {"conv_direct_first_layer"}


@pytest.fixture(autouse=True)
def _needs_cpp_and_restores_threads():
    if "cpp" not in fusedops.available_backends():
        pytest.fail(f"the cpp backend must be built here: {backends._REGISTRY['cpp'].unavailable_reason()}")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _make(factory, backend, dtype):
    torch.manual_seed(1)
    return factory(backend).to(dtype)


def _step(module, x, grad_out, input_grad=True):
    """Output and the gradients of input (when input_grad), weight and bias of one call."""
    x = x.detach().requires_grad_(input_grad)
    out = module(x)
    params = [module.weight] + ([module.bias] if module.bias is not None else [])
    grads = torch.autograd.grad(out, ([x] if input_grad else []) + params, grad_out)
    return [out.detach()] + list(grads)


def _inputs(module, shape, count, dtype):
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(count)]
    with torch.no_grad():
        outs = [module(x) for x in xs]
    return xs, [torch.randn(o.shape, generator=gen, dtype=dtype) for o in outs]


@pytest.mark.parametrize("backend", ["cpp", None], ids=["cpp", "auto"])
@pytest.mark.parametrize("name,factory,shape", MODULES, ids=IDS)
def test_concurrent_threads_equal_serial_calls(name, factory, shape, backend):
    torch.set_num_threads(2)  # intra-op parallelism inside every Python thread's calls
    module = _make(factory, backend, torch.float32)
    xs, gos = _inputs(module, shape, THREADS * ITERATIONS, torch.float32)
    serial = [_step(module, x, go, name not in NO_INPUT_GRAD) for x, go in zip(xs, gos)]

    results = [None] * len(xs)
    errors = []
    start = threading.Barrier(THREADS)

    def work(t):
        try:
            start.wait()
            for i in range(ITERATIONS):
                k = t * ITERATIONS + i
                results[k] = _step(module, xs[k], gos[k], name not in NO_INPUT_GRAD)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    labels = ["output"] + (["grad_input"] if name not in NO_INPUT_GRAD else []) + ["grad_weight", "grad_bias"]
    for k, (got, want) in enumerate(zip(results, serial)):
        for label, g, s in zip(labels, got, want):
            assert torch.equal(g, s), f"{name}: call {k}: {label} differs from the serial call"


@pytest.mark.parametrize("name,factory,shape", MODULES, ids=IDS)
def test_changing_thread_counts_between_calls(name, factory, shape):
    """The per-thread partial sums and scratch buffers follow the thread count of each call:
    more threads than the last call, then fewer, then more again."""
    module = _make(factory, "cpp", torch.float64)
    reference = _make(factory, "reference", torch.float64)
    reference.load_state_dict(module.state_dict())
    xs, gos = _inputs(module, shape, 2, torch.float64)
    expected = [_step(reference, x, go, name not in NO_INPUT_GRAD) for x, go in zip(xs, gos)]
    first = {}
    for n in [1, 2, 4, 1, 3, 2, 4, 1]:
        torch.set_num_threads(n)
        for k, (x, go) in enumerate(zip(xs, gos)):
            got = _step(module, x, go, name not in NO_INPUT_GRAD)
            for g, e in zip(got, expected[k]):
                torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
            if (n, k) in first:
                for g, f in zip(got, first[n, k]):
                    assert torch.equal(g, f), f"{name}: {n} threads: a repeated call differs"
            else:
                first[n, k] = got
