"""FusedConvBlock and FusedLinear behave as the torch layers they replace."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import fusedops
from fusedops import FusedConvBlock, FusedLinear

CONV_CONFIGS = [
    dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(1, 2), groups=2, bias=False),
    dict(in_channels=3, out_channels=5, kernel_size=3, padding="same", dilation=2),
]
PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=str)
def test_same_init_and_state_dict_keys_as_conv2d(cfg):
    torch.manual_seed(3)
    conv = nn.Conv2d(**cfg)
    torch.manual_seed(3)
    block = FusedConvBlock(**cfg)
    assert list(block.state_dict()) == list(conv.state_dict())
    for key, value in conv.state_dict().items():
        assert torch.equal(block.state_dict()[key], value), key


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=str)
def test_conv2d_state_dict_loads_and_outputs_match(cfg, padding_mode):
    conv = nn.Conv2d(**cfg, padding_mode=padding_mode).double()
    pool = nn.MaxPool2d(2)
    block = FusedConvBlock(**cfg, padding_mode=padding_mode, dtype=torch.float64)
    block.load_state_dict(conv.state_dict())
    x = torch.randn(2, cfg["in_channels"], 11, 12, dtype=torch.float64)
    torch.testing.assert_close(block(x), pool(torch.relu(conv(x))))
    # and back: the block's state dict loads into a Conv2d
    conv2 = nn.Conv2d(**cfg, padding_mode=padding_mode).double()
    conv2.load_state_dict(block.state_dict())
    torch.testing.assert_close(conv2.weight, block.weight)


def test_from_modules_and_to_modules_round_trip():
    seq = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True)).double()
    block = FusedConvBlock.from_modules(*seq)
    assert block.weight.data_ptr() != seq[0].weight.data_ptr()  # a copy, not shared
    x = torch.randn(2, 3, 13, 10, dtype=torch.float64)
    torch.testing.assert_close(block(x), seq(x))
    back = block.to_modules()
    assert [type(m) for m in back] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    torch.testing.assert_close(back(x), seq(x))
    no_pool = FusedConvBlock.from_modules(seq[0])
    assert no_pool.pool_kernel_size is None
    torch.testing.assert_close(no_pool(x), torch.relu(seq[0](x)))
    assert [type(m) for m in no_pool.to_modules()] == [nn.Conv2d, nn.ReLU]


@pytest.mark.parametrize(
    "act_module", [None, nn.ReLU(), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU()], ids=str
)
def test_linear_from_to_modules_and_state_dict(act_module):
    lin = nn.Linear(7, 5).double()
    fused = FusedLinear.from_modules(lin, act_module)
    x = torch.randn(3, 2, 7, dtype=torch.float64)
    ref = lin(x) if act_module is None else act_module(lin(x))
    torch.testing.assert_close(fused(x), ref)
    torch.testing.assert_close(fused.to_modules()(x), ref)
    assert list(fused.state_dict()) == list(lin.state_dict()) == ["weight", "bias"]
    torch.manual_seed(1)
    a = nn.Linear(7, 5)
    torch.manual_seed(1)
    b = FusedLinear(7, 5)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_dtype_and_device_moves():
    block = FusedConvBlock(3, 4, 3)
    lin = FusedLinear(4, 2, activation="silu")
    for m in (block, lin):
        assert m.double().weight.dtype == torch.float64
        assert m.half().weight.dtype == torch.float16
        assert m.float().to("cpu").weight.dtype == torch.float32
        assert m.to(torch.bfloat16).weight.dtype == torch.bfloat16
        m.float()
    x = torch.randn(1, 3, 8, 8)
    assert block.double()(x.double()).dtype == torch.float64
    assert FusedConvBlock(3, 4, 3, dtype=torch.float64).weight.dtype == torch.float64
    assert FusedLinear(3, 4, device="meta").weight.device.type == "meta"


def test_deepcopy_pickle_and_torch_save():
    block = FusedConvBlock(3, 4, 3, padding=1, pool_kernel_size=3, pool_stride=2, backend="reference")
    x = torch.randn(2, 3, 9, 9)
    expected = block(x)
    for clone in (copy.deepcopy(block), pickle.loads(pickle.dumps(block))):
        torch.testing.assert_close(clone(x), expected)
        assert clone.backend == "reference"
    buffer = io.BytesIO()
    torch.save(block, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), expected)


def test_hooks_train_eval_no_grad():
    block = FusedConvBlock(3, 4, 3)
    seen = []
    handle = block.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    pre = block.register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    x = torch.randn(1, 3, 8, 8)
    out = block(x)
    torch.testing.assert_close(out, block.to_modules()(x * 2))
    assert seen == [out.shape]
    handle.remove()
    pre.remove()
    grads = []
    block.weight.register_hook(lambda g: grads.append(g))
    block(x).sum().backward()
    assert len(grads) == 1
    assert block.eval().training is False and block.train().training is True
    with torch.no_grad():
        assert block(x).grad_fn is None


def test_extra_repr_is_informative():
    text = repr(FusedConvBlock(3, 8, 3, padding=1, pool_kernel_size=3, pool_stride=2, backend="reference"))
    for part in ("3, 8", "kernel_size=(3, 3)", "padding=(1, 1)", "relu", "pool_kernel_size=(3, 3)",
                 "pool_stride=(2, 2)", "backend=reference"):
        assert part in text
    assert "no pool" in repr(FusedConvBlock(3, 8, 3, pool_kernel_size=None))
    text = repr(FusedLinear(4, 2, activation="gelu"))
    assert "in_features=4" in text and "activation=gelu" in text


def test_unbatched_and_empty_batch_through_module():
    block = FusedConvBlock(3, 4, 3, padding=1)
    ref = block.to_modules()
    for x in (torch.randn(3, 8, 8), torch.randn(0, 3, 8, 8)):
        torch.testing.assert_close(block(x), ref(x))
    lin = FusedLinear(3, 2, activation="relu")
    for x in (torch.randn(3), torch.randn(0, 3)):
        torch.testing.assert_close(lin(x), lin.to_modules()(x))


def test_public_names():
    for name in ("conv_relu_maxpool2d", "linear", "FusedConvBlock", "FusedLinear", "available_backends"):
        assert hasattr(fusedops, name)
