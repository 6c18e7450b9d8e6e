"""Save fused models with the fusedops on the path, for tests/test_saved_models.py.

    PYTHONPATH=<a checkout of an older fusedops> python tools/save_model_fixture.py OUT.pt

Writes ``{"version", "input", "models": {name: module}, "outputs": {name: tensor}}`` with
``torch.save``: a model built from FusedConvBlock and FusedLinear, and a plain CNN rewritten
by that version's ``fuse()``, each with its output on the saved input (CPU, float32, that
version's automatic backend). A newer fusedops must load the file (``torch.load(...,
weights_only=False)``, as for any pickled model) and give the same outputs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import fusedops


def models():
    torch.manual_seed(0)
    blocks = nn.Sequential(
        fusedops.FusedConvBlock(3, 8, 3, padding=1),
        fusedops.FusedConvBlock(8, 16, 3, stride=1, padding=1, pool_kernel_size=3, pool_stride=2, pool_padding=1),
        nn.Flatten(),
        fusedops.FusedLinear(16 * 4 * 4, 32, activation="gelu"),
        fusedops.FusedLinear(32, 10),
    )
    plain = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )
    return {"blocks": blocks.eval(), "fused": fusedops.fuse(plain.eval())}


def main(out: str) -> None:
    root = Path(fusedops.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    built = models()
    with torch.no_grad():
        outputs = {name: m(x) for name, m in built.items()}
    torch.save({"version": f"fusedops {fusedops.__version__} ({commit})", "input": x, "models": built,
                "outputs": outputs}, out)
    print(f"wrote {out}: {', '.join(f'{k} {type(v).__name__}' for k, v in built.items())} from {commit}")


if __name__ == "__main__":
    main(sys.argv[1])
