"""Every ```python block of README.md runs as written, so the README cannot rot."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write results folders
    torch.manual_seed(0)
    code = BLOCKS[index]
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
