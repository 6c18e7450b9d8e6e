"""Every ```python block of the README runs, each on its own (its own imports and names).

A block that needs a CUDA device is marked by the HTML comment ``<!-- readme-test: needs cuda -->``
on the line before its fence and is skipped, saying so, where there is none.
"""

import contextlib
import io
import pathlib
import re

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
NEEDS = {"needs cuda": (torch.cuda.is_available, "no CUDA device")}


def python_blocks(text: str):
    """``(line of the fence, marks, code)`` for every ```python block of ``text``."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, language = i, m.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md:{start + 1}: a ``` block that is never closed")
        if language == "python":
            marks = []
            k = start - 1
            while k >= 0 and MARK.match(lines[k]):
                marks.append(MARK.match(lines[k]).group(1))
                k -= 1
            blocks.append((start + 1, marks, "\n".join(lines[start + 1 : end]) + "\n"))
        i = end + 1
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_readme_has_the_use_examples():
    assert len(BLOCKS) >= 4
    assert any("fusedops.FusedConvBlock(" in code and "fusedops.linear(" in code for _, _, code in BLOCKS)


def test_block_marks_are_known():
    for line, marks, _ in BLOCKS:
        unknown = [m for m in marks if m not in NEEDS]
        assert not unknown, f"README.md:{line}: unknown readme-test mark(s) {unknown}; known: {list(NEEDS)}"


def test_block_extraction():
    text = "x\n```bash\nmake\n```\n<!-- readme-test: needs cuda -->\n```python\na = 1\n```\n```python\nb = 2\n```\n"
    assert python_blocks(text) == [(6, ["needs cuda"], "a = 1\n"), (9, [], "b = 2\n")]
    with pytest.raises(ValueError, match="never closed"):
        python_blocks("```python\na = 1\n")


@pytest.mark.parametrize("line,marks,code", BLOCKS, ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_readme_block_runs(line, marks, code, monkeypatch, tmp_path):
    for mark in marks:
        available, reason = NEEDS[mark]
        if not available():
            pytest.skip(f"README.md:{line} ({mark}): {reason}")
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    compiled = compile(code, f"README.md:{line}", "exec")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compiled, {"__name__": "__readme__"})
