"""fuse(): rewrites tutorial models in place of their chains and keeps everything else.

Each model family comes back as the same kind of object (class, methods, attributes,
buffers, hooks, containers), computes the same function (outputs, SGD steps, second
derivatives), maps its state dict as the README says, and still compiles and exports.
"""

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
from tests.test_double_backward import _assert_same_grads, _penalty_grads

# Fused modules expected in train mode and in eval mode, for each of models.FUSE_MODELS.
FUSED_COUNTS = {
    "cifar_tutorial": (5, 5),
    "shared_relu_pool": (4, 4),
    "mnist_sequential": (4, 4),
    "lenet_functional": (5, 5),
    "sequential_cnn": (4, 4),
    "functional_relu_free_param": (4, 4),
    "mlp": (3, 3),
    "residual_bn": (1, 2),
    "resnet_style": (1, 4),
    "custom_params_methods": (3, 3),
    "custom_raw_params": (1, 1),
    "no_fusable": (0, 0),
}
# (factory, input shape at batch 2, fused modules expected in train mode, in eval mode)
MODELS = {name: (factory, (2, *shape), *FUSED_COUNTS[name]) for name, (factory, shape) in models.FUSE_MODELS.items()}

# eval mode: (folded BatchNorm prefixes whose keys disappear, conv bias keys that appear)
FOLDED_KEYS = {
    "residual_bn": (["block.bn1."], ["block.conv1.bias"]),
    "resnet_style": (
        ["stem.1.", "layer1.0.bn1.", "layer1.1.bn1."],
        ["stem.0.bias", "layer1.0.conv1.bias", "layer1.1.conv1.bias"],
    ),
}


def _count(model):
    return sum(isinstance(m, (FusedConvBlock, FusedLinear)) for m in model.modules())


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def _build(name, mode):
    factory, shape, n_train, n_eval = MODELS[name]
    model = factory().double().train(mode == "train")
    for m in model.modules():  # non-trivial statistics and affine parameters for the folds
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model, shape, (n_train if mode == "train" else n_eval)


def _run(model, x, seed=0):
    torch.manual_seed(seed)  # the same dropout masks for both models
    return model(x)


def _is_structure(m: nn.Module) -> bool:
    """Containers and user-defined modules: what fuse() must keep at its place and type."""
    return isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) or not type(m).__module__.startswith("torch.")


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fuse_keeps_the_model_and_its_function(name, mode):
    model, shape, expected = _build(name, mode)
    before_state, before_types = _snapshot(model)
    fused = fusedops.fuse(model)
    assert fused is not model and type(fused) is type(model)
    assert _count(fused) == expected
    # the input model is untouched
    after_state, after_types = _snapshot(model)
    assert after_types == before_types and after_state.keys() == before_state.keys()
    assert all(torch.equal(after_state[k], before_state[k]) for k in before_state)
    assert _count(model) == 0
    # containers and user modules stay where they were, with their class
    for path, m in model.named_modules():
        if _is_structure(m):
            assert type(fused.get_submodule(path)) is type(m), path
    assert "def forward" not in str(fused)
    # same function: outputs, then 5 SGD steps in float64
    x = torch.randn(shape, dtype=torch.float64)
    ref_model = copy.deepcopy(model)
    torch.testing.assert_close(_run(fused, x), _run(ref_model, x))
    if mode == "train":
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert sum(p.numel() for p in fused.parameters() if p.requires_grad) == trainable
        _check_sgd_steps(ref_model, fused, shape)


def _check_sgd_steps(ref_model, fused, shape, steps=5):
    opt_ref = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9)
    opt_fused = torch.optim.SGD(fused.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        x = torch.randn(shape, dtype=torch.float64)
        losses = []
        for m, opt in ((ref_model, opt_ref), (fused, opt_fused)):
            opt.zero_grad()
            loss = _run(m, x, seed=step).square().mean()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0])
    for (key, want), got in zip(ref_model.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(got, want, msg=key)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_maps_key_by_key(name, mode):
    """README: every key is kept, except that folding a BatchNorm removes its keys and adds
    the conv's bias when it had none; kept keys hold the same values."""
    model, shape, _ = _build(name, mode)
    fused = fusedops.fuse(model)
    removed, added = FOLDED_KEYS.get(name, ([], [])) if mode == "eval" else ([], [])
    original = model.state_dict()
    expected = [k for k in original if not any(k.startswith(p) for p in removed)]
    assert sorted(fused.state_dict()) == sorted(expected + added)
    folded_convs = {k.rsplit(".", 1)[0] for k in added}
    for key, value in fused.state_dict().items():
        if key in original and key.rsplit(".", 1)[0] not in folded_convs:
            assert torch.equal(value, original[key]), key
    if not removed:  # without a fold the original state dict loads as it is, both ways
        fused.load_state_dict(original)
        model.load_state_dict(fused.state_dict())


@pytest.mark.parametrize("name", ["cifar_tutorial", "lenet_functional", "resnet_style", "sequential_cnn"])
def test_inplace_rewrites_the_model_and_shares_its_parameters(name):
    model, shape, expected = _build(name, "train")
    params = {id(p) for p in model.parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before fuse(): still trains the model
    x = torch.randn(shape, dtype=torch.float64)
    ref = _run(model, x)
    out = fusedops.fuse(model, inplace=True)
    assert out is model and _count(model) == expected
    assert {id(p) for p in model.parameters()} == params
    torch.testing.assert_close(_run(model, x), ref)
    opt.zero_grad()
    _run(model, x).square().mean().backward()
    opt.step()
    assert not torch.allclose(_run(model, x), ref)


def test_shared_relu_and_pool_modules_stay_attributes():
    model = models.SharedActivationCNN()
    fused = fusedops.fuse(model)
    assert type(fused.relu) is nn.ReLU and type(fused.pool) is nn.MaxPool2d
    assert isinstance(fused.conv1, FusedConvBlock) and fused.conv1.pool_kernel_size == (2, 2)
    assert isinstance(fused.fc1, FusedLinear) and fused.fc1.activation == "relu"
    assert fused.fc2.activation is None


def test_methods_attributes_buffers_and_training_switch_are_kept():
    model = models.TemperatureClassifier().double()
    fused = fusedops.fuse(model)
    assert isinstance(fused, models.TemperatureClassifier) and fused.num_classes == 5
    assert [n for n, _ in fused.named_buffers()] == ["calls"]
    assert {n for n, _ in fused.named_parameters()} == {n for n, _ in model.named_parameters()}
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    # fused in train mode, then switched: the forward follows self.training (dropout)
    fused.eval()
    model.eval()
    torch.testing.assert_close(fused(x), model(x))
    torch.testing.assert_close(fused.predict(x), model.predict(x))
    fused.train()
    model.train()
    torch.testing.assert_close(_run(fused, x), _run(model, x))
    assert not torch.allclose(_run(fused, x, seed=1), fused.eval()(x))


def test_model_hooks_fire_and_hooked_layers_are_left_alone():
    model = models.TutorialNet()
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append("model"))
    model.conv2.register_forward_hook(lambda m, i, o: calls.append("conv2"))
    fused = fusedops.fuse(model)
    assert type(fused.conv2) is nn.Conv2d and isinstance(fused.conv1, FusedConvBlock)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fused(x), model(x))
    assert calls == ["conv2", "model", "conv2", "model"]


def test_shared_or_aliased_layers_are_not_fused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 4)
            self.heads = nn.ModuleList([self.fc])  # the same Linear under a second name

        def forward(self, x):
            x = torch.relu(self.conv(torch.relu(self.conv(x))))
            return torch.relu(self.fc(x.mean((2, 3))))

    model = Twice()
    fused = fusedops.fuse(model)
    assert _count(fused) == 0
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fused(x), model(x))


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


def test_sequential_keeps_container_and_names():
    model = models.sequential_cnn()
    fused = fusedops.fuse(model)
    assert type(fused) is nn.Sequential
    assert list(fused._modules) == ["0", "3", "6", "7", "9"]
    assert [type(m) for m in fused] == [FusedConvBlock, FusedConvBlock, nn.Flatten, FusedLinear, FusedLinear]
    second, head = fused._modules["3"], fused._modules["7"]
    assert second.pool_ceil_mode and second.pool_kernel_size == (3, 3)
    assert head.activation == "gelu"


def test_batchnorm_folded_in_eval_only():
    model, _, _ = _build("resnet_style", "eval")
    fused = fusedops.fuse(model)
    assert type(fused.stem) is nn.Sequential and list(fused.stem._modules) == ["0"]
    assert isinstance(fused.stem[0], FusedConvBlock) and fused.stem[0].pool_kernel_size == (2, 2)
    block = fused.layer1[0]
    assert type(block) is models.BasicBlock and type(block.bn1) is nn.Identity
    assert type(block.bn2) is nn.BatchNorm2d and isinstance(block.conv1, FusedConvBlock)
    trained = fusedops.fuse(models.ResNetStyle().train())
    assert type(trained.stem[1]) is nn.BatchNorm2d and type(trained.layer1[0].bn1) is nn.BatchNorm2d
    assert isinstance(trained.fc, FusedLinear) and _count(trained) == 1


def test_untraceable_model_falls_back_with_warning():
    model = models.Untraceable()
    with pytest.warns(UserWarning, match="cannot trace"):
        fused = fusedops.fuse(model)
    assert type(fused) is models.Untraceable and "forward" not in fused.__dict__
    assert isinstance(fused.body[0], FusedConvBlock)
    assert _count(fused.net) == 4
    x = torch.randn(2, 3, 16, 16).abs()
    torch.testing.assert_close(fused(x), model(x))


def test_fusing_twice_changes_nothing_more():
    once = fusedops.fuse(models.TutorialNet())
    twice = fusedops.fuse(once)
    assert _count(twice) == 5
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(twice(x), once(x))


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
    with pytest.raises(TypeError, match="inplace must be a bool"):
        fusedops.fuse(nn.Linear(2, 2), inplace=1)
    with pytest.raises(ValueError, match="known backends"):
        fusedops.fuse(nn.Linear(2, 2), backend="fast")


# ---- second derivatives through fused models --------------------------------------------


@pytest.mark.parametrize("name", [n for n in MODELS if n != "no_fusable"])
def test_gradient_penalty_through_fused_model(name):
    model, shape, _ = _build(name, "train")
    fused = fusedops.fuse(model)
    x = torch.randn(shape, dtype=torch.float64)
    torch.manual_seed(0)
    want = _penalty_grads(model, x)
    torch.manual_seed(0)
    _assert_same_grads(_penalty_grads(fused, x), want)


@pytest.mark.parametrize("name", ["lenet_functional", "functional_relu_free_param", "mlp"])
def test_gradgradcheck_through_fused_model(name):
    model, shape, _ = _build(name, "eval")
    fused = fusedops.fuse(model)
    x = torch.randn((1, *shape[1:]), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: fused(x).square().sum(), (x,), fast_mode=True)


# ---- integration -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar_tutorial", "lenet_functional", "custom_params_methods", "resnet_style"])
def test_fused_model_compiles_fullgraph_forward_and_backward(name):
    torch._dynamo.reset()
    # eval: BN folded (resnet_style), dropout off (compiled dropout draws other masks than eager)
    mode = "eval" if name in ("resnet_style", "custom_params_methods") else "train"
    model, shape, _ = _build(name, mode)
    model = fusedops.fuse(model.float())
    x = torch.randn(shape)
    out = torch.compile(model, fullgraph=True)(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model(x)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("name", ["functional_relu_free_param", "lenet_functional", "resnet_style"])
def test_fused_model_exports_saves_loads_runs(name):
    model, shape, _ = _build(name, "eval")
    model = fusedops.fuse(model.float())
    x = torch.randn(shape)
    exported = torch.export.export(model, (x,))
    assert "fusedops" in exported.graph_module.code
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


@pytest.mark.parametrize("name", ["cifar_tutorial", "sequential_cnn", "custom_params_methods", "resnet_style"])
def test_torch_save_load_deepcopy_and_copy_of_fused_model(name):
    model, shape, _ = _build(name, "eval")
    fused = fusedops.fuse(model)
    x = torch.randn(shape, dtype=torch.float64)
    want = fused(x)
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (loaded, copy.deepcopy(fused), copy.copy(fused)):
        assert type(other) is type(model)
        torch.testing.assert_close(other(x), want)
    clone = copy.deepcopy(fused)  # independent: changing the copy leaves the original as it was
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    assert not torch.allclose(clone(x), want)
    torch.testing.assert_close(fused(x), want)


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
