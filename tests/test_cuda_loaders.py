"""The CUDA implicit GEMMs' operand loaders (csrc/cuda/tile_loaders.h), checked on the CPU.

The loaders are host-and-device code: tests/cuda_loaders_test.cpp compiles them with the host
C++ compiler (no CUDA toolkit needed) and compares, for many conv geometries (strides,
dilations, pool paddings, groups, channels_last strides, images smaller than a k step) and
strided matrices, every element each thread of a block fetches over every k step with the
operand's definition, and checks that each tile position is written exactly once; and that the
stride phases of the channel-run input gradient (run_loaders.h axis_phase) enumerate each
(input, tap) pair of a strided, dilated, padded axis exactly once, at the output it reads, and
that the run loader of that input gradient (InputGradRunLoader), over the blocks
input_grad_phase_grid counts, computes a direct convolution's input gradient on 300 random
geometries; and that the conv forward's run loader of the input (PooledRunLoader) names the
input's run of every k step at every conv position of 300 random geometries and of one whose
last element lies 2^31 - 1 elements from its first (the largest image its 32-bit offsets take);
and that FastDivisor (division by a multiply, the un-pool's index arithmetic) divides exactly
over divisors and dividends up to 2^63 - 1.
"""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail("no C++ compiler found (CXX, c++, g++, clang++): the extension's build needs one too")


def test_every_loader_fetches_its_operands_elements(tmp_path):
    exe = tmp_path / "cuda_loaders_test"
    source = os.path.join(ROOT, "tests", "cuda_loaders_test.cpp")
    build = subprocess.run([_compiler(), "-std=c++17", "-O1", "-Wall", "-Werror", "-I", os.path.join(ROOT, "csrc"),
                            "-o", str(exe), source], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:]
    assert " 0 failures" in run.stdout and "22 conv geometries" in run.stdout, run.stdout
    assert "4900 stride-phase axes" in run.stdout, run.stdout  # 7 strides x 4 dilations x 5 pads x 7 kernels x 5 sizes
    assert "300 input gradients over runs" in run.stdout, run.stdout
    assert "301 forward inputs over runs" in run.stdout, run.stdout  # 300 random geometries, rows 2^31 apart
    # every divisor up to 4096, the powers of two from 2^12 to 2^62 and their neighbours, 2000 random ones
    assert "6249 fast divisors" in run.stdout, run.stdout
