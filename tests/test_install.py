"""The README's install commands: pinned test tools, and CI running exactly what a newcomer runs."""

import os
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-dev.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"constraints-dev.txt: {line!r} is not an exact pin (name==version)"
            pins[name.strip().lower()] = ver.strip()
    return pins


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.S) if b.strip().startswith("pip install")]


def test_readme_commands_use_the_pinned_test_tools():
    cmds = _readme_commands()
    assert len(cmds) >= 2, cmds
    install, test = cmds[0], cmds[1]
    assert "-c constraints-dev.txt" in install and "-c constraints-dev.txt" in test
    assert test.endswith("python -m pytest -q")
    # CI runs the README's test command verbatim, inside a fresh venv
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci
    assert "python3 -m venv" in ci and ci.index("python3 -m venv") < ci.index(test)


def test_pins_cover_the_tools_that_broke_together():
    pins = _pins()
    for name in ("pytest", "schemathesis", "hypothesis"):
        assert name in pins, f"constraints-dev.txt must pin {name}"
    major, minor = (int(x) for x in pins["pytest"].split(".")[:2])
    assert (major, minor) < (9, 2), "pytest 9.2.0 breaks schemathesis 4.32.5's plugin"


@pytest.mark.skipif(not os.environ.get("OMNILOOM_FRESH_VENV"), reason="only in .ci/run's fresh venv")
def test_fresh_venv_got_the_pinned_versions():
    for name, want in _pins().items():
        try:
            got = version(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} is not installed; the README's test command installs it")
        assert got == want, f"{name} {got} installed, constraints-dev.txt pins {want}"
