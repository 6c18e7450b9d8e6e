"""fuse(): rewrites tutorial models, keeps their function, parameters and the input model."""

import copy
import io
import os
import sys

import pytest
import torch
from torch import nn

import fusedops
from fusedops import FusedConvBlock, FusedLinear
from tests import models

# (factory, input shape, fused modules expected in train mode, in eval mode)
MODELS = {
    "tutorial_attributes": (models.TutorialNet, (4, 3, 32, 32), 5, 5),
    "sequential_cnn": (models.sequential_cnn, (4, 3, 32, 32), 4, 4),
    "functional_relu_free_param": (models.FunctionalCNN, (4, 3, 16, 16), 4, 4),
    "mlp": (models.TutorialMLP, (4, 1, 28, 28), 3, 3),
    "residual_bn": (models.ResNetish, (4, 3, 8, 8), 1, 2),
    "custom_raw_params": (models.CustomLayerNet, (4, 3, 8, 8), 1, 1),
    "no_fusable": (models.NoFusable, (4, 3, 8, 8), 0, 0),
}


def _count(model):
    return sum(isinstance(m, (FusedConvBlock, FusedLinear)) for m in model.modules())


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fuse_tutorial_models(name, mode):
    factory, shape, n_train, n_eval = MODELS[name]
    model = factory().double().train(mode == "train")
    if name == "residual_bn":  # non-trivial running statistics for the fold
        for bn in (model.block.bn1, model.block.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    before_state, before_types = _snapshot(model)
    fused = fusedops.fuse(model)
    assert _count(fused) == (n_train if mode == "train" else n_eval)
    # the input model is untouched
    after_state, after_types = _snapshot(model)
    assert after_types == before_types and after_state.keys() == before_state.keys()
    assert all(torch.equal(after_state[k], before_state[k]) for k in before_state)
    assert _count(model) == 0
    # same function, outputs and gradients
    x = torch.randn(shape, dtype=torch.float64)
    ref_model = copy.deepcopy(model)
    torch.testing.assert_close(fused(x), ref_model(x))
    if mode == "train":
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert sum(p.numel() for p in fused.parameters() if p.requires_grad) == trainable
        _check_sgd_steps(ref_model, fused, shape)


def _check_sgd_steps(ref_model, fused, shape, steps=3):
    opt_ref = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9)
    opt_fused = torch.optim.SGD(fused.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(shape, dtype=torch.float64)
        losses = []
        for m, opt in ((ref_model, opt_ref), (fused, opt_fused)):
            opt.zero_grad()
            loss = m(x).square().mean()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0])


def test_sequential_keeps_container_and_names():
    model = models.sequential_cnn()
    fused = fusedops.fuse(model)
    assert type(fused) is nn.Sequential
    assert list(fused._modules) == ["0", "3", "6", "7", "9"]
    assert [type(m) for m in fused] == [FusedConvBlock, FusedConvBlock, nn.Flatten, FusedLinear, FusedLinear]
    second, head = fused._modules["3"], fused._modules["7"]
    assert second.pool_ceil_mode and second.pool_kernel_size == (3, 3)
    assert head.activation == "gelu"
    # state-dict keys: the Conv2d's / Linear's keys are kept
    assert set(fused.state_dict()) == set(model.state_dict())
    fused.load_state_dict(model.state_dict())


def test_attribute_model_keeps_key_names():
    model = models.TutorialNet()
    fused = fusedops.fuse(model)
    assert isinstance(fused, torch.fx.GraphModule)
    assert set(fused.state_dict()) == set(model.state_dict())
    assert isinstance(fused.conv1, FusedConvBlock) and fused.conv1.pool_kernel_size == (2, 2)
    assert isinstance(fused.fc1, FusedLinear) and fused.fc1.activation == "relu"
    assert fused.fc3.activation is None
    text = str(fused)
    assert "FusedConvBlock" in text and "FusedLinear" in text


def test_batchnorm_folded_in_eval_only():
    model = models.ResNetish().eval()
    bn = model.block.bn1
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    fused = fusedops.fuse(model)
    keys = set(fused.state_dict())
    assert not any(k.startswith("block.bn1.") for k in keys)  # folded into block.conv1
    assert "block.conv1.bias" in keys and "block.bn2.weight" in keys
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)
    trained = fusedops.fuse(models.ResNetish().train())
    assert isinstance(trained.block.bn1, nn.BatchNorm2d)


def test_intermediate_with_another_user_is_not_fused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            c = self.conv(x)
            y = torch.relu(c)
            z = self.lin(y.mean((2, 3)))
            return z + c.mean((1, 2, 3)).unsqueeze(1) + torch.relu(z).sum()

    model = Branchy()
    fused = fusedops.fuse(model)
    assert not any(isinstance(m, FusedConvBlock) for m in fused.modules())
    lin = [m for m in fused.modules() if isinstance(m, FusedLinear)]
    assert len(lin) == 1 and lin[0].activation is None  # z has two users: no activation fused
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fused(x), model(x))


def test_untraceable_model_falls_back_with_warning():
    model = models.Untraceable()
    with pytest.warns(UserWarning, match="cannot trace"):
        fused = fusedops.fuse(model)
    assert type(fused) is models.Untraceable
    assert isinstance(fused.body[0], FusedConvBlock)
    assert _count(fused.net) == 4
    x = torch.randn(2, 3, 16, 16).abs()
    torch.testing.assert_close(fused(x), model(x))


def test_inplace_and_verbose(capsys):
    model = models.sequential_cnn()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    out = fusedops.fuse(model, inplace=True, backend="reference", verbose=True)
    assert out is model and _count(model) == 4
    assert all(m.backend == "reference" for m in model.modules() if isinstance(m, (FusedConvBlock, FusedLinear)))
    torch.testing.assert_close(model(x), ref)
    printed = capsys.readouterr().out
    assert "Conv2d + ReLU + MaxPool2d -> FusedConvBlock" in printed and "Linear + GELU -> FusedLinear" in printed


def test_fuse_rejects_bad_arguments():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fusedops.fuse("model")
    with pytest.raises(ValueError, match="known backends"):
        fusedops.fuse(nn.Linear(2, 2), backend="fast")


# ---- integration -------------------------------------------------------------------------


def test_fused_model_compiles_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    model = fusedops.fuse(models.TutorialNet())
    x = torch.randn(4, 3, 32, 32)
    out = torch.compile(model, fullgraph=True)(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model(x)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_fused_model_exports_saves_loads_runs():
    model = fusedops.fuse(models.FunctionalCNN().eval())
    x = torch.randn(2, 3, 16, 16)
    exported = torch.export.export(model, (x,))
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.export.load(buffer).module()(x), model(x))


def test_fused_model_under_autocast():
    model = models.sequential_cnn()
    fused = fusedops.fuse(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = fused(x), model(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=5e-2, rtol=5e-2)


def test_torch_save_load_of_fused_model():
    for model in (fusedops.fuse(models.TutorialNet()), fusedops.fuse(models.sequential_cnn())):
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(loaded(x), model(x))


def _ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests import models as m

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = fusedops.fuse(m.TutorialNet().double())
    ddp = nn.parallel.DistributedDataParallel(model)
    torch.manual_seed(1)
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    ddp(x.chunk(world)[rank]).square().mean().backward()
    if rank == 0:
        torch.save({k: p.grad for k, p in model.named_parameters()}, out_file)
    dist.destroy_process_group()


def test_ddp_gloo_two_processes_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    out_file = str(tmp_path / "grads.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), out_file), nprocs=2, join=True)
    ddp_grads = torch.load(out_file)
    torch.manual_seed(0)
    model = fusedops.fuse(models.TutorialNet().double())
    torch.manual_seed(1)
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    # DDP averages the two half-batch gradients: the same as the mean over both halves' losses
    sum(model(h).square().mean() for h in x.chunk(2)).div(2).backward()
    assert ddp_grads.keys() == dict(model.named_parameters()).keys()
    for k, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[k], p.grad)
