"""The compiled extension fusedops._C: built by `make test`'s install, loads, defines the schemas."""

import shutil
import subprocess
import sys

import pytest
import torch

from fusedops import _native

NATIVE_OPS = ("native_conv_block_forward", "native_conv_block_backward", "native_linear_forward",
              "native_linear_backward")


def test_extension_is_built_and_loads():
    assert _native.loaded(), _native.LOAD_ERROR


def test_native_schemas_match_graph_level_ops():
    """The compiled kernels' ops take the graph-level ops' arguments, less the backend name."""
    for native in NATIVE_OPS:
        graph_level = native.removeprefix("native_")
        n = getattr(torch.ops.fusedops, native).default._schema
        g = getattr(torch.ops.fusedops, graph_level).default._schema
        assert [a.name for a in n.arguments] == [a.name for a in g.arguments][:-1]
        assert g.arguments[-1].name == "backend"
        assert [str(a.type) for a in n.arguments] == [str(a.type) for a in g.arguments][:-1]
        assert len(n.returns) == len(g.returns)


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("ldd") is None, reason="ldd reads ELF (Linux)")
def test_extension_shares_libstdcxx_with_torch():
    """The extension loads the shared libstdc++ (torch's), not a copy of its own: built by a
    g++ whose library path holds only libstdc++.a (a wrapper with -B<that dir>, as on one GPU
    machine), its error messages lost their numbers, or the process crashed formatting them
    (setup.py links the libstdc++.so torch loaded to prevent it)."""
    import fusedops._C as ext

    needed = subprocess.run(["ldd", ext.__file__], capture_output=True, text=True, check=True).stdout
    assert "libstdc++.so" in needed, needed
