"""torch.library registration: opcheck, torch.compile(fullgraph=True), torch.export, autocast."""

import io

import pytest
import torch
from torch import nn

import fusedops
from fusedops.ops.conv_block import ConvBlockParams


def _model():
    return nn.Sequential(
        fusedops.FusedConvBlock(3, 8, 3, padding=1),
        fusedops.FusedConvBlock(8, 16, 3, padding=1, pool_kernel_size=3, pool_stride=2, pool_padding=1),
        nn.Flatten(),
        fusedops.FusedLinear(16 * 2 * 2, 32, activation="gelu"),
        fusedops.FusedLinear(32, 10),
    )


CONV_PARAMS = [
    ConvBlockParams((1, 1), (1, 1, 1, 1), (1, 1), 1, (2, 2), (2, 2), (0, 0), (1, 1), False),
    ConvBlockParams((2, 1), (0, 1, 1, 0), (1, 2), 2, (3, 3), (2, 2), (1, 1), (1, 1), True),
    ConvBlockParams((1, 1), (0, 0, 0, 0), (1, 1), 1, (), (1, 1), (0, 0), (1, 1), False),
]


@pytest.mark.parametrize("params", CONV_PARAMS, ids=["pool2", "asym_ceil_grouped", "nopool"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_opcheck_conv_block_ops(params, channels_last):
    x = torch.randn(2, 4, 9, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 4 // params.groups, 3, 3)
    b = torch.randn(6)
    torch.library.opcheck(torch.ops.fusedops.conv_block_forward.default, (x, w, b, *params, ""))
    out, offsets = torch.ops.fusedops.conv_block_forward(x, w, b, *params, "")
    g = torch.randn_like(out)
    for mask in ([True, True, True], [False, True, False], [True, False, False]):
        torch.library.opcheck(
            torch.ops.fusedops.conv_block_backward.default, (g, x, w, offsets, *params[:8], mask, "")
        )
    tx, tw, tb = torch.randn_like(x), torch.randn_like(w), torch.randn_like(b)
    for tangents in ((tx, tw, tb), (tx, None, None), (None, tw, tb)):
        torch.library.opcheck(torch.ops.fusedops.conv_block_jvp.default, (x, w, offsets, *tangents, *params[:8], ""))


@pytest.mark.parametrize("activation", ["", "relu", "gelu", "gelu_tanh", "silu"])
def test_opcheck_linear_ops(activation):
    x, w, b = torch.randn(3, 5, 7), torch.randn(4, 7), torch.randn(4)
    torch.library.opcheck(torch.ops.fusedops.linear_forward.default, (x, w, b, activation, ""))
    out, saved = torch.ops.fusedops.linear_forward(x, w, b, activation, "")
    g = torch.randn_like(out)
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(
            torch.ops.fusedops.linear_backward.default, (g, x, w, saved, activation, mask, "")
        )


def test_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    model = _model()
    x = torch.randn(4, 3, 8, 8)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.square().sum().backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model(x)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for got, want in zip(compiled_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want)


def test_compile_records_the_fused_ops():
    """Dynamo records each fused layer as our Function, whose bodies call the registered ops."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(_model(), fullgraph=True, backend=backend)(torch.randn(2, 3, 8, 8))
    (graph,) = graphs
    assert graph.code.count("autograd_function_apply(") == 4
    assert "convolution" not in graph.code and "max_pool" not in graph.code
    for i, op in enumerate(("conv_block", "conv_block", "linear", "linear")):
        assert f"fusedops.{op}_forward" in getattr(graph, f"fwd_body_{i}").code
        assert f"fusedops.{op}_backward" in getattr(graph, f"bwd_body_{i}").code


def test_export_save_load_run():
    model = _model().eval()
    x = torch.randn(2, 3, 8, 8)
    exported = torch.export.export(model, (x,))
    code = exported.graph_module.code
    assert "fusedops.conv_block_forward" in code and "fusedops.linear_forward" in code
    for node in exported.graph.nodes:  # the fused ops replace torch's conv/pool/linear
        assert "convolution" not in str(node.target) and "max_pool" not in str(node.target)
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    torch.testing.assert_close(loaded.module()(x), model(x))


def test_autocast_cpu_bfloat16_like_torch_layers():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    seq = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))
    block = fusedops.FusedConvBlock.from_modules(*seq)
    lin = nn.Linear(8, 5)
    flin = fusedops.FusedLinear.from_modules(lin, nn.SiLU())
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = block(x), seq(x)
        lout, lref = flin(torch.randn(4, 8)), None
        lref = nn.functional.silu(lin(torch.randn(4, 8)))
    assert out.dtype == ref.dtype == torch.bfloat16
    assert lout.dtype == lref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    out.float().sum().backward()
    assert block.weight.grad.dtype == torch.float32  # master weights stay float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float64 is not autocast, as in torch
        assert block.double()(x.double()).dtype == torch.float64
