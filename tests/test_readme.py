"""Every Python snippet of README.md runs as written, in order, in one namespace (issue 14, item 15)."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_snippets():
    assert len(_snippets()) >= 8


@pytest.mark.slow
def test_readme_snippets_run_as_written(tmp_path, monkeypatch):
    # The serving snippet writes savedmodels/...: run where that lands in a temporary folder.
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for i, code in enumerate(_snippets(), 1):
        try:
            exec(compile(code, f"README.md snippet {i}", "exec"), namespace)  # noqa: S102
        except Exception as err:  # noqa: BLE001 -- re-raised with the snippet named
            raise AssertionError(f"README snippet {i} failed:\n{code}") from err
    assert os.path.isdir(tmp_path / "savedmodels" / "latent_ode_spiral" / "1")
