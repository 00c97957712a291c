"""README examples run as written (in a scratch directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO


def _python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_python_example() -> None:
    assert _python_blocks()


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_assets) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_blocks()[index], f"README.md[{index}]", "exec"), {"__name__": "__readme__"})
