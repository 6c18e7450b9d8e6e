"""Backend registry: name -> backend, automatic choice, and dispatch of the registered ops.

A backend computes the forward and backward of both fused ops. Each says, as a list of
human-readable reasons, why it cannot run given inputs (``unsupported_reasons``); an empty
list means it can. Automatic choice (``backend=None`` and ``FUSEDOPS_BACKEND`` unset) takes
the first backend of the device's preference order that can run, and ends at
``"reference"``, which runs everything. A backend named explicitly that cannot run raises
``RuntimeError`` with its reasons.

The graph-level ops ``fusedops::conv_block_forward`` etc. get their implementation here:
it resolves the backend at run time (so a compiled or exported graph keeps the automatic
choice) and calls it.
"""

from __future__ import annotations

import functools
import platform
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Union

import torch

from . import _native
from ._env import EnvVar
from .ops import conv_block, linear
from .ops.conv_block import ConvBlockParams

# Whether autocast is on for any device: one cheap call on the hot path (torch.is_autocast_enabled
# needs the device type); where this torch lacks it, every call asks for the input's device.
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)
_has_torch_function = torch._C._has_torch_function  # a __torch_function__ override (subclass or mode)

ENV_VAR = "FUSEDOPS_BACKEND"
_BACKEND_ENV = EnvVar(ENV_VAR)
_INTERPRET_ENV = EnvVar("TRITON_INTERPRET")

# Preference order of automatic choice, per device type. "reference" closes every list.
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpp", "reference")}


@functools.cache
def onednn_has_bfloat16() -> bool:
    """Whether oneDNN (eager's CPU convolution) has native bfloat16 kernels on this CPU. On x86:
    AVX-512 BF16 or AMX instructions, as torch reports them. oneDNN also runs bfloat16 on an
    AVX-512 CPU without them (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is true there),
    emulated and slower than its float32 conv (a Xeon with AVX-512 and no BF16: eager
    channels_last's bf16 conv 2.5x-3.5x its float32 one on the 32->64 tutorial layers), so it
    does not count. Elsewhere, or where this torch cannot tell, oneDNN's own answer; where that is
    missing too, assume it has (the rule measured on such a CPU stands)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        if platform.machine().lower() in ("x86_64", "amd64") and all(probes):
            return any(bool(probe()) for probe in probes)
        onednn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(onednn()) if onednn is not None else True
    except RuntimeError:
        return True


@functools.cache
def cpu_has_avx512() -> bool:
    """Whether this CPU has AVX-512 (torch's probe; where torch cannot tell, assume it has).
    oneDNN's convolutions run 16 lanes wide there; on a Xeon with AVX-512 its NCHW conv beat
    the cpp Winograd path on the no-pool layers, which the no-pool rule below asks about."""
    probe = getattr(torch.cpu, "_is_avx512_supported", None)
    try:
        return bool(probe()) if probe is not None else True
    except RuntimeError:
        return True


@functools.cache
def cpu_vector_rows() -> bool:
    """Whether the cpp kernels' 32-byte vector code runs as such on this CPU (AVX2 and FMA, and
    a build with the vector clones; csrc/cpu/vectorize.h). Without them its row kernels run lane
    by lane, slower than scalar loops."""
    if not _native.loaded():
        return False
    from . import _C

    return bool(_C._cpu_direct_conv_available())


class Backend:
    """Base class: a named implementation of both ops' forward and backward."""

    name = ""
    devices: Sequence[str] = ()
    ops: Sequence[str] = ("conv_relu_maxpool2d", "linear")  # the ops it has kernels for
    # Its kernels are compiled ops of fusedops._C with their autograd in C++: a fused call runs
    # as one op (fusedops::native_conv_block / native_linear), no Python in between.
    native = False

    def unavailable_reason(self) -> Optional[str]:
        """Why this backend cannot run on this machine at all (None if it can)."""
        return None

    def unsupported_reasons(self, tensors: Sequence[torch.Tensor]) -> List[str]:
        """Why this backend cannot run these inputs; empty if it can."""
        reason = self.unavailable_reason()
        if reason is not None:
            return [reason]
        reasons = []
        for t in tensors:
            if t.device.type not in self.devices:
                reasons.append(
                    f"{self.name!r} runs on {' or '.join(self.devices)} tensors, got a {t.device.type} tensor"
                )
                break
        return reasons

    def auto_eligible(self, op: str, facts: Dict[str, object]) -> bool:
        """Whether automatic choice may take this backend for ``op``: only where it is faster.

        ``facts`` describes the problem (e.g. ``in_channels_per_group``, ``pooled``).
        """
        return True

    def conv_block_forward(self, input, weight, bias, params: ConvBlockParams):
        raise NotImplementedError

    def conv_block_backward(self, grad_output, input, weight, offsets, params, output_mask):
        raise NotImplementedError

    def conv_block_jvp(self, input, weight, offsets, input_tangent, weight_tangent, bias_tangent, params):
        """The output's tangent at fixed offsets (``fusedops::conv_block_jvp``)."""
        raise NotImplementedError

    def conv_block_output(self, input, weight, bias, params: ConvBlockParams):
        """The block's output alone, when nothing will be differentiated (no offsets needed)."""
        return self.conv_block_forward(input, weight, bias, params)[0]

    def linear_forward(self, input, weight, bias, activation: str):
        raise NotImplementedError

    def linear_backward(self, grad_output, input, weight, saved, activation, output_mask):
        raise NotImplementedError


class ReferenceBackend(Backend):
    """Torch-op composition of the same math and saved state: the oracle; runs everywhere."""

    name = "reference"
    devices = ("cpu", "cuda", "meta")

    def unsupported_reasons(self, tensors):
        return []

    def conv_block_forward(self, input, weight, bias, params):
        return conv_block.reference_forward(input, weight, bias, params)

    def conv_block_output(self, input, weight, bias, params):
        return conv_block.reference_output(input, weight, bias, params)

    def conv_block_backward(self, grad_output, input, weight, offsets, params, output_mask):
        return conv_block.reference_backward(grad_output, input, weight, offsets, params, output_mask)

    def conv_block_jvp(self, input, weight, offsets, input_tangent, weight_tangent, bias_tangent, params):
        return conv_block.reference_jvp(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, params)

    def linear_forward(self, input, weight, bias, activation):
        return linear.reference_forward(input, weight, bias, activation)

    def linear_backward(self, grad_output, input, weight, saved, activation, output_mask):
        return linear.reference_backward(grad_output, input, weight, saved, activation, output_mask)


class NativeBackend(Backend):
    """A backend whose kernels are the compiled ``fusedops::native_*`` ops of ``fusedops._C``;
    the dispatcher picks the CPU or CUDA kernel from the tensors' device."""

    native = True

    def conv_block_forward(self, input, weight, bias, params):
        return torch.ops.fusedops.native_conv_block_forward(input, weight, bias, *params)

    def conv_block_backward(self, grad_output, input, weight, offsets, params, output_mask):
        return torch.ops.fusedops.native_conv_block_backward(
            grad_output, input, weight, offsets, *params[:8], output_mask
        )

    def conv_block_jvp(self, input, weight, offsets, input_tangent, weight_tangent, bias_tangent, params):
        return torch.ops.fusedops.native_conv_block_jvp(
            input, weight, offsets, input_tangent, weight_tangent, bias_tangent, *params[:8]
        )

    def linear_forward(self, input, weight, bias, activation):
        return torch.ops.fusedops.native_linear_forward(input, weight, bias, activation)

    def linear_backward(self, grad_output, input, weight, saved, activation, output_mask):
        return torch.ops.fusedops.native_linear_backward(grad_output, input, weight, saved, activation, output_mask)


class CppBackend(NativeBackend):
    """C++ CPU kernels in ``fusedops._C`` (csrc/cpu): float32 and float64 CPU tensors, and
    bfloat16 (CPU autocast) through the float32 kernels.

    The linear kernels use the same BLAS as eager (plus a fused activation pass); through the
    native op (one C++ autograd node) they cost no more than eager, so automatic choice takes
    them for linear layers.
    """

    name = "cpp"
    devices = ("cpu",)

    def unavailable_reason(self):
        return _native.LOAD_ERROR

    # Measured on a 2-core CPU (benchmarks/NOTES.md): the fused kernel beats eager on pooled
    # layers with few input channels (the first layer of a CNN) and on pooled 3x3 stride-1
    # layers with enough channels for its Winograd path (csrc/cpu/winograd.h), forward and
    # backward (in bfloat16 it beats the reference there, not oneDNN's native bf16 conv).
    # Other pooled layers run im2col + GEMM per band: faster than the reference (what
    # automatic choice would run instead) while the GEMM's reduction K = in_channels/groups *
    # KH * KW is short (K 144-288 measured, forward and training step,
    # benchmarks/cpp_auto_rule.py), slower from K = 400 on. Without a pool the 3x3 stride-1
    # layers on NCHW float input: the kernel's training step beat the reference's on an
    # AVX-512 Xeon, and its forward on the first layers' and (on the AVX2 EPYC) on the Winograd
    # layers: see auto_eligible. oneDNN is faster on the other no-pool layers measured and on
    # channels_last input.
    # A channels_last input is where oneDNN's conv (what the reference runs) is fastest: there
    # the reference's forward beat the cpp kernel's on every pooled layer measured past the
    # first, and its training step did in bfloat16 on the Winograd layers; the cpp kernel kept
    # the float32 training steps and the first layers' (benchmarks/NOTES.md). The first layers'
    # forward (<= 4 input channels per group, stride-1 columns: the direct convolution,
    # csrc/cpu/direct_conv.h) beat oneDNN's channels_last conv in float32 and bfloat16.
    # The bfloat16 rules above were measured on a CPU where oneDNN has native bfloat16 kernels
    # (an AVX-512 BF16 EPYC). Where it has none (onednn_has_bfloat16() false), eager's and the
    # reference's bf16 conv is slower than these float32 kernels on bf16 copies on every conv
    # block measured, pooled or not, in either layout (benchmarks/NOTES.md): oneDNN's reference
    # implementation on an AVX2-only CPU, 5-50x slower; its emulated bf16 on an AVX-512 Xeon
    # without BF16, 2.1x-3.7x: there the kernel takes every bf16 conv block.
    MAX_AUTO_IN_CHANNELS = 4
    MAX_AUTO_IM2COL_K = 300

    def auto_eligible(self, op, facts):
        if op.startswith("linear"):
            # Same BLAS as eager plus one activation pass, and one C++ autograd node where the
            # reference runs a Python Function: measured at eager speed (benchmarks/NOTES.md).
            return True
        if not op.startswith("conv_relu_maxpool2d"):
            return False
        if facts.get("dtype") == torch.bfloat16 and not onednn_has_bfloat16():
            return True
        if not facts.get("pooled"):
            # Without a pool, NCHW float32/float64 inputs only, and 3x3 stride-1 kernels only
            # (benchmarks/NOTES.md, `benchmarks/cpp_auto_rule.py --no-pool`). Training (a graph
            # recorded), on an AVX-512 Xeon: the kernel beat the reference on 6 of 8 such layers
            # in two runs, 1.03x-1.45x eager NCHW against 0.72x-1.04x; split on 32->64 @14 (which
            # run.py measured at 1.05x-1.43x against 0.93x-1.07x); lost on 16->16 @16 (0.75x-0.83x
            # against 0.84x-0.86x). Forward alone: the direct convolution's layers (fewer than 8
            # input channels per group), 1.06x-1.48x in 8 of 9 measurements (one 0.69x) against
            # 0.97x-1.05x; the Winograd layers only on a CPU without AVX-512: 1.15x-1.25x eager
            # NCHW on an AVX2 EPYC, 0.71x-1.89x over shapes and runs on an AVX-512 Xeon, whose
            # oneDNN NCHW conv is 1.8x the AVX2 machine's.
            # Only ungrouped layers were measured, and only with the vector rows.
            if facts.get("channels_last") or facts.get("dtype") not in (torch.float32, torch.float64):
                return False
            if not facts.get("unit_3x3") or facts.get("groups") != 1 or not cpu_vector_rows():
                return False
            if facts.get("graph", True):
                return True
            if int(facts.get("in_channels_per_group", 1 << 30)) < WINOGRAD_MIN_CHANNELS:
                return True
            return bool(facts.get("winograd")) and not cpu_has_avx512()
        if facts.get("channels_last"):
            if not facts.get("graph", True) and not facts.get("direct"):
                return False
            if facts.get("dtype") == torch.bfloat16 and facts.get("winograd"):
                return False
        if int(facts.get("in_channels_per_group", 1 << 30)) <= self.MAX_AUTO_IN_CHANNELS:
            return True
        if facts.get("winograd"):
            return True
        # bfloat16 runs the float32 kernels on copies: on LeNet's 6->16 5x5 layer that tied with
        # the reference (forward and training step), so the im2col clause is float32/float64 only.
        return facts.get("dtype") != torch.bfloat16 and int(facts.get("gemm_k", 1 << 30)) <= self.MAX_AUTO_IM2COL_K

    def unsupported_reasons(self, tensors):
        reasons = super().unsupported_reasons(tensors)
        if not reasons and tensors[0].dtype not in (torch.float32, torch.float64, torch.bfloat16):
            reasons.append(f"'cpp' supports float32, float64 and bfloat16 tensors, got {tensors[0].dtype}")
        return reasons


class CudaBackend(NativeBackend):
    """CUDA kernels in ``fusedops._C`` (csrc/cuda): float32, float64, float16 and bfloat16 CUDA tensors."""

    name = "cuda"
    devices = ("cuda",)

    def unavailable_reason(self):
        if _native.LOAD_ERROR is not None:
            return _native.LOAD_ERROR
        if not _native.WITH_CUDA:
            return (
                "'cuda' needs fusedops._C built with its CUDA kernels; this build has none "
                "(torch without CUDA, or no nvcc at build time)"
            )
        if not torch.cuda.is_available():
            return "'cuda' needs a CUDA device"
        return None

    # Automatic choice, measured on an H200 (benchmarks/results/cuda-nvidia-h200/eighth-run.md,
    # bfloat16, MaxPool2d(2) after a 3x3 stride-1 conv, NCHW and channels_last inputs): on the
    # tutorial layers (1->32 @28, 3->32 @32, 32->64 @14 and @16, batch 256) 1.34x-3.80x eager's
    # forward and 1.75x-2.44x its training step plainly launched, 1.06x-4.4x graph-replayed,
    # where the reference (today's automatic choice there) was 0.97x-1.0x and 0.46x-0.49x; on
    # the VGG block (64->128 @112, batch 64) 0.99x and 0.80x, slower than the reference's
    # training step. So: bfloat16, that conv and pool, ungrouped, at most the tutorial layers'
    # channels (the boundary drawn between the measured layers: the choice is cached per weight
    # shape, not per image size; float16 and float32 not yet timed side by side).
    MAX_AUTO_IN_CHANNELS = 32
    MAX_AUTO_OUT_CHANNELS = 64

    def auto_eligible(self, op, facts):
        if not op.startswith("conv_relu_maxpool2d"):
            return False  # the linear layer: faster than eager plainly launched, slower graph-replayed
        return (facts.get("dtype") == torch.bfloat16 and bool(facts.get("unit_3x3")) and facts.get("groups") == 1
                and bool(facts.get("pool_2x2")) and int(facts.get("in_channels_per_group", 1 << 30))
                <= self.MAX_AUTO_IN_CHANNELS and int(facts.get("out_channels", 1 << 30)) <= self.MAX_AUTO_OUT_CHANNELS)

    def unsupported_reasons(self, tensors):
        reasons = super().unsupported_reasons(tensors)
        if not reasons and tensors[0].dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            reasons.append(f"'cuda' supports float32, float64, float16 and bfloat16 tensors, got {tensors[0].dtype}")
        return reasons


class TritonBackend(Backend):
    """Triton kernels (fusedops/triton): CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""

    name = "triton"
    devices = ("cuda", "cpu")

    @staticmethod
    @functools.cache
    def _import_error() -> Optional[str]:
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            return f"triton is not installed ({exc})"
        return None

    @staticmethod
    def _interpreting() -> bool:
        return _INTERPRET_ENV.get() == "1"

    def auto_eligible(self, op, facts):
        # Not yet timed on a GPU (benchmarks/NOTES.md): until it is measured faster than the
        # reference (cuDNN, cuBLAS) there, automatic choice does not take it; name it to use it.
        return False

    def unavailable_reason(self):
        error = self._import_error()
        if error is not None:
            return error
        if not self._interpreting() and not torch.cuda.is_available():
            return "'triton' needs a CUDA device (or TRITON_INTERPRET=1 to run its kernels on CPU tensors)"
        return None

    def unsupported_reasons(self, tensors):
        reasons = super().unsupported_reasons(tensors)
        if not reasons and tensors[0].device.type == "cpu" and not self._interpreting():
            reasons.append("'triton' runs CPU tensors only under TRITON_INTERPRET=1")
        return reasons

    def conv_block_forward(self, input, weight, bias, params):
        from .triton import conv_block as kernels

        return kernels.forward(input, weight, bias, params)

    def conv_block_backward(self, grad_output, input, weight, offsets, params, output_mask):
        from .triton import conv_block as kernels

        return kernels.backward(grad_output, input, weight, offsets, params, output_mask)

    def conv_block_jvp(self, input, weight, offsets, input_tangent, weight_tangent, bias_tangent, params):
        from .triton import conv_block_jvp as kernels

        return kernels.jvp(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, params)

    def linear_forward(self, input, weight, bias, activation):
        from .triton import linear as kernels

        return kernels.forward(input, weight, bias, activation)

    def linear_backward(self, grad_output, input, weight, saved, activation, output_mask):
        from .triton import linear as kernels

        return kernels.backward(grad_output, input, weight, saved, activation, output_mask)


_REGISTRY: Dict[str, Backend] = {}


def register(backend: Backend) -> None:
    """Add (or replace) a backend under ``backend.name``."""
    _REGISTRY[backend.name] = backend
    clear_choice_cache()


# Backend choices already made, keyed by everything they depend on (see select), and how
# often they were forgotten (ChoiceMemo compares it).
_CHOICES: Dict[tuple, Backend] = {}
_GENERATION = [0]


def clear_choice_cache() -> None:
    """Forget the choices made so far (after a change to the registry or the auto order)."""
    _CHOICES.clear()
    _GENERATION[0] += 1


class ChoiceMemo:
    """The backend choices of one fused module, next to the module.

    A module's problem is fixed (its arguments; its weight's shape is part of the key), so its
    choice depends only on the input's device type and dtype and ``FUSEDOPS_BACKEND``: a
    lookup here is a few attribute reads, where ``select`` would rebuild the problem's facts.
    Forgotten with the global cache; copies and pickles of a module start empty.
    """

    __slots__ = ("generation", "entries", "native_call", "checked_call", "python_call")

    def __init__(self):
        self.generation, self.entries = _GENERATION[0], {}
        self.native_call: Optional[tuple] = None  # see record_native / native_again
        self.checked_call: Optional[tuple] = None  # see checked_before
        self.python_call: Optional[tuple] = None  # see record_python / python_again

    @staticmethod
    def tensor_signature(input, weight, bias) -> Optional[tuple]:
        """What the functional layer's tensor checks read of a module's call (types, dtypes,
        devices, shapes; not strides), or None where there is no cheap answer (a tensor
        subclass as input, or a weight or bias that is not a tensor)."""
        if type(input) is not torch.Tensor or not isinstance(weight, torch.Tensor):
            return None
        if bias is None:
            return input.shape, input.dtype, input.device, weight.shape, weight.dtype, weight.device
        if not isinstance(bias, torch.Tensor):
            return None
        return (input.shape, input.dtype, input.device, weight.shape, weight.dtype, weight.device,
                bias.shape, bias.dtype, bias.device)

    def checked_before(self, signature: Optional[tuple]) -> bool:
        """Whether a call with this ``tensor_signature`` passed the tensor checks last time:
        a module's repeat call on tensors like the last one's skips them (about 20 us on
        CPU, more than the rest of the Python path), since their verdict depends on nothing
        else (the module's arguments are fixed)."""
        return signature is not None and signature == self.checked_call

    def record_checked(self, signature: Optional[tuple]) -> None:
        """Remember the signature of a call whose tensors passed the checks."""
        self.checked_call = signature

    def record_native(self, input: torch.Tensor, weight: torch.Tensor, facts: tuple, stamp: tuple) -> None:
        """Remember that a call on ``input`` (cast, where autocast cast it) ran natively, on a
        choice made under ``stamp`` (see ``stamp``)."""
        self.native_call = (input.dtype, weight.shape, input.is_cpu, input.is_cuda, facts, stamp)

    def native_again(self, input, weight: torch.Tensor, bias: Optional[torch.Tensor], facts: tuple = ()) -> bool:
        """Whether this call is one the last native call's choice covers: the same input dtype
        and device type, the same weight shape (kept, not the weight: a weight passed by
        ``functional_call`` is not held past its call), the same ``facts``,
        ``FUSEDOPS_BACKEND`` and choice generation, and no autocast, tracing or
        ``__torch_function__`` override (a tensor subclass's or a mode's) to apply first.
        A module's forward asks this before anything else: a hit calls the op's typed entry
        (``fusedops._C``), skipping the memo's key and lookup, the functional layer's checks
        and torch.ops' argument parsing, which cost more than the native op's call."""
        last = self.native_call
        return (last is not None and not torch.compiler.is_compiling() and type(input) is torch.Tensor
                and last[0] is input.dtype and last[1] == weight.shape and last[2] == input.is_cpu
                and last[3] == input.is_cuda and last[4] == facts and last[5] == self.stamp() and not _any_autocast()
                and not _has_torch_function((input, weight, bias)))

    @staticmethod
    def stamp() -> tuple:
        """What every choice also depends on: the choice generation and ``FUSEDOPS_BACKEND``,
        read before a choice is made (another thread may change them while it is checked)."""
        return _GENERATION[0], _BACKEND_ENV.get()

    def record_python(self, signature: Optional[tuple], facts: tuple, chosen: Backend, stamp: tuple) -> None:
        """Remember that a call whose tensors have this ``tensor_signature`` (they passed the
        checks) and ``facts`` ran on ``chosen``, a backend run through the autograd Function
        (not a native op), chosen under ``stamp`` (see ``stamp``)."""
        if signature is not None:
            self.python_call = (signature, facts, chosen, stamp)

    def python_again(self, input, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     facts: tuple = ()) -> Optional[Backend]:
        """The backend of the last Function call (``record_python``) when this call is one its
        choice and checks cover: the same tensor signature (types, dtypes, devices, shapes:
        all that the checks and the choice read) and ``facts``, the same
        ``FUSEDOPS_BACKEND`` and choice generation, and no autocast, tracing or
        ``__torch_function__`` override; else None. A module's forward asks this after
        ``native_again``: a hit runs the Function (or, without a graph, the backend's output)
        straight away, skipping the functional layer's lookups."""
        if torch.compiler.is_compiling():  # first: nothing here may become a guard of a graph
            return None
        last = self.python_call
        if (last is None or last[1] != facts or last[3] != self.stamp() or _any_autocast()
                or _has_torch_function((input, weight, bias)) or self.tensor_signature(input, weight, bias) != last[0]):
            return None
        return last[2]

    @staticmethod
    def key(input: torch.Tensor, weight: torch.Tensor, requested: str, extra: tuple = ()) -> tuple:
        """What a module's choice depends on (the environment variable only in automatic mode),
        and ``extra`` facts of the call (a conv block's input layout and graph)."""
        return input.is_cuda, input.is_cpu, input.dtype, weight.shape, requested or _BACKEND_ENV.get(), extra

    def get(self, key: tuple) -> Optional[Backend]:
        if self.generation != _GENERATION[0]:
            self.generation, self.entries = _GENERATION[0], {}
        return self.entries.get(key)

    def put(self, key: tuple, backend: Backend) -> None:
        self.entries[key] = backend

    def __reduce__(self):
        return (ChoiceMemo, ())

    def __deepcopy__(self, memo):
        return ChoiceMemo()


register(ReferenceBackend())
register(TritonBackend())
register(CppBackend())
register(CudaBackend())


def known_backends() -> List[str]:
    """Every registered backend name, available here or not."""
    return list(_REGISTRY)


def available_backends() -> List[str]:
    """Names of the backends that can run on this machine, e.g. ``["reference", "cpp"]``."""
    return [name for name, b in _REGISTRY.items() if b.unavailable_reason() is None]


def check_backend_name(name) -> str:
    """Validate a user-given backend name; returns '' for automatic (None)."""
    if name is None:
        return ""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; known backends are {known_backends()}")
    return name


def check_backend_available(name) -> str:
    """``check_backend_name``, and for a named backend that this machine's build can run it at
    all (what module construction and ``fuse`` check, so that a backend that cannot run here
    fails there, not at the first forward): ``RuntimeError`` with the reason otherwise."""
    name = check_backend_name(name)
    if name:
        reason = _REGISTRY[name].unavailable_reason()
        if reason is not None:
            raise RuntimeError(
                f"backend {name!r} is not available here: {reason}; available backends are {available_backends()}"
            )
    return name


def select(
    requested: str,
    tensors: Sequence[torch.Tensor],
    op: str,
    facts: Union[None, Dict[str, object], Callable[[], Dict[str, object]]] = None,
    facts_key: Optional[Hashable] = None,
) -> Backend:
    """The backend that runs ``op`` on ``tensors``.

    ``requested`` is a backend name or '' for automatic; in the automatic case the
    environment variable ``FUSEDOPS_BACKEND``, when set, names the backend instead, else the
    first backend of the device's order that can run the inputs and is eligible for the
    problem described by ``facts`` (see ``Backend.auto_eligible``).

    A choice depends only on the names, ``op``, the problem's facts and the first tensor's
    device type and dtype (a mismatch of the others is an error the kernels report), so it is
    made once per such key and cached; a change of ``FUSEDOPS_BACKEND`` is a new key.
    Refusals are not cached: they raise every time. ``facts`` may be a callable that builds
    the dict, called only when the choice is not cached yet; ``facts_key`` then identifies
    the facts in the cache (by default the dict's values).
    """
    first = tensors[0]
    if facts_key is None and facts is not None and not callable(facts):
        facts_key = tuple(facts.values())
    key = (requested, _BACKEND_ENV.get(), op, first.is_cuda, first.is_cpu, first.dtype, facts_key)
    chosen = _CHOICES.get(key)
    if chosen is None:
        facts = facts() if callable(facts) else facts
        chosen = _CHOICES[key] = _select(requested or key[1], requested, tensors, op, facts)
    return chosen


def _select(name: str, requested: str, tensors, op: str, facts) -> Backend:
    """``select`` without the cache; ``name`` is the requested or environment-named backend."""
    if name:
        if name not in _REGISTRY:
            source = "backend" if requested else f"environment variable {ENV_VAR}"
            raise ValueError(f"unknown {source} {name!r}; known backends are {known_backends()}")
        backend = _REGISTRY[name]
        reasons = backend.unsupported_reasons(tensors)
        if op.split()[0] not in backend.ops:
            reasons.append(f"{name!r} has no kernels for {op.split()[0]} (it implements {', '.join(backend.ops)})")
        if reasons:
            raise RuntimeError(f"backend {name!r} cannot run {op} on these inputs: " + "; ".join(reasons))
        return backend
    for candidate in AUTO_ORDER.get(tensors[0].device.type, ("reference",)):
        backend = _REGISTRY[candidate]
        if (
            op.split()[0] in backend.ops
            and not backend.unsupported_reasons(tensors)
            and backend.auto_eligible(op, facts or {})
        ):
            return backend
    return _REGISTRY["reference"]


def _present(*tensors):
    return [t for t in tensors if t is not None]


# Channels per group from which the cpp kernel takes its Winograd F(2x2, 3x3) path
# (kWinogradMinChannels in csrc/conv_geometry.h).
WINOGRAD_MIN_CHANNELS = 8

# Input channels per group up to which the cpp kernel's direct convolution (stride-1 columns)
# was measured faster than oneDNN's channels_last conv: the first layers. (The C++ direct path,
# direct_conv::kMaxChannels in csrc/cpu/direct_conv.h, takes up to 16; from 6 channels on it was
# level with oneDNN there in float32 and slower in bfloat16, so those stay with the reference.)
DIRECT_MAX_CHANNELS = 4


def conv_facts(weight, p: ConvBlockParams, input: Optional[torch.Tensor] = None, graph: bool = True
               ) -> Dict[str, object]:
    """What automatic choice knows of a conv block problem: the weight's shape and dtype, the
    parameters, the input's layout (``channels_last``) and whether the call records a graph
    for backward (``graph``; the graph-level ops assume it does)."""
    unit_3x3 = tuple(weight.shape[2:]) == (3, 3) and p.stride == (1, 1) and p.dilation == (1, 1)
    winograd = unit_3x3 and min(weight.shape[0] // p.groups, weight.shape[1]) >= WINOGRAD_MIN_CHANNELS
    return {
        "in_channels_per_group": weight.shape[1],
        "out_channels": weight.shape[0],
        "gemm_k": weight.shape[1] * weight.shape[2] * weight.shape[3],  # im2col's reduction length
        "pooled": p.has_pool,
        # MaxPool2d(2): 2x2 windows of stride 2, no padding or dilation
        "pool_2x2": p.has_pool and tuple(p.pool_kernel_size) == (2, 2) and tuple(p.pool_stride) == (2, 2)
        and tuple(p.pool_padding) == (0, 0) and tuple(p.pool_dilation) == (1, 1),
        "unit_3x3": unit_3x3,  # 3x3, stride 1, dilation 1
        "groups": p.groups,
        "winograd": winograd,
        "direct": not winograd and weight.shape[1] <= DIRECT_MAX_CHANNELS and p.stride[1] == 1,
        "dtype": weight.dtype,
        "channels_last": input is not None and conv_block.strictly_channels_last(input),
        "graph": graph,
    }


# ---- implementations of the graph-level ops: resolve the backend, run it ----------------


@torch.library.impl("fusedops::conv_block_forward", "CompositeExplicitAutograd")
def _conv_block_forward(input, weight, bias, *args):
    *params, backend = args
    p = conv_block.params_from_op_args(*params)
    chosen = select(backend, _present(input, weight, bias), "conv_relu_maxpool2d", conv_facts(weight, p, input))
    return chosen.conv_block_forward(input, weight, bias, p)


@torch.library.impl("fusedops::conv_block_backward", "CompositeExplicitAutograd")
def _conv_block_backward(grad_output, input, weight, offsets, *args):
    *params, output_mask, backend = args
    p = conv_block.params_from_op_args(*params)
    chosen = select(backend, [grad_output, input, weight], "conv_relu_maxpool2d backward", conv_facts(weight, p, input))
    return chosen.conv_block_backward(grad_output, input, weight, offsets, p, output_mask)


@torch.library.impl("fusedops::conv_block_jvp", "CompositeExplicitAutograd")
def _conv_block_jvp(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, *args):
    *params, backend = args
    p = conv_block.params_from_op_args(*params)
    tensors = _present(input, weight, input_tangent, weight_tangent, bias_tangent)
    chosen = select(backend, tensors, "conv_relu_maxpool2d jvp", conv_facts(weight, p, input))
    return chosen.conv_block_jvp(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, p)


@torch.library.impl("fusedops::linear_forward", "CompositeExplicitAutograd")
def _linear_forward(input, weight, bias, activation, backend):
    chosen = select(backend, _present(input, weight, bias), "linear")
    return chosen.linear_forward(input, weight, bias, activation)


@torch.library.impl("fusedops::linear_backward", "CompositeExplicitAutograd")
def _linear_backward(grad_output, input, weight, saved, activation, output_mask, backend):
    chosen = select(backend, [grad_output, input, weight], "linear backward")
    return chosen.linear_backward(grad_output, input, weight, saved, activation, output_mask)
