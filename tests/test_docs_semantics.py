"""Run every ```python block of docs/semantics.md: the documented numbers are checked.

Each block is self-contained and runs in a fresh namespace. A failure names the block's
line and the failing line of docs/semantics.md.
"""

from __future__ import annotations

import linecache
import re
import traceback
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "semantics.md"
FENCE_OPEN = re.compile(r"^```python\s*$")
FENCE_CLOSE = re.compile(r"^```\s*$")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line of the opening fence, code)`` for every ```python block (1-based lines)."""
    blocks: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if FENCE_OPEN.match(lines[i]):
            opening = i + 1
            body: list[str] = []
            i += 1
            while i < len(lines) and not FENCE_CLOSE.match(lines[i]):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise AssertionError(f"{path.name}:{opening}: ```python block is never closed")
            blocks.append((opening, "\n".join(body) + "\n"))
        i += 1
    return blocks


BLOCKS = python_blocks(DOC) if DOC.exists() else []


def test_doc_has_python_blocks() -> None:
    assert DOC.exists(), f"{DOC} is missing"
    assert BLOCKS, f"{DOC} has no ```python blocks to run"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"semantics.md:{line}" for line, _ in BLOCKS])
def test_doc_block_runs(line: int, code: str) -> None:
    # The block's own name; its source is registered so tracebacks can show the lines.
    filename = f"<docs/semantics.md python block at line {line}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    namespace: dict[str, object] = {"__name__": f"docs_semantics_line_{line}"}
    message = None
    try:
        exec(compile(code, filename, "exec"), namespace)
    except Exception as exc:
        failing = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == filename]
        where = ""
        if failing:
            doc_line = line + failing[-1].lineno  # the code's line 1 is the line after the fence
            where = f", at docs/semantics.md:{doc_line}: {failing[-1].line}"
        message = (
            f"the ```python block at docs/semantics.md line {line} failed{where}\n"
            f"{type(exc).__name__}: {exc}\n\n" + "".join(traceback.format_exception(exc))
        )
    if message is not None:
        pytest.fail(message, pytrace=False)
