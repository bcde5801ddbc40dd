"""The layer table of docs/architecture.md, checked: import-linter contracts + rules it cannot express."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "omniloom"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter not installed (pip install -e '.[dev]')")
    res = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "broken" in res.stdout and "0 broken" in res.stdout


def test_tokens_import_no_torch_nn():
    offenders = []
    for path in (PKG / "tokens").rglob("*.py"):
        bad = {n for n in _imports(path) if n == "torch.nn" or n.startswith("torch.nn.")}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, offenders


def test_cli_help_is_fast_and_lists_verbs():
    res = subprocess.run([sys.executable, "-m", "omniloom.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    for verb in ("tokenizer", "tokenize", "train", "export"):
        assert verb in res.stdout


def test_overrides_may_follow_options(tmp_path):
    from omniloom.cli import main

    # the override after --resume reaches the config: the error names the shard dir it set
    missing = tmp_path / "nope"
    res = subprocess.run([sys.executable, "-m", "omniloom.cli", "train", "--preset", "debug", "train.steps=1",
                          "--resume", "never", f"data.train={missing}"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and str(missing) in res.stderr, res.stderr
    with pytest.raises(SystemExit):
        main(["train", "--preset", "debug", "--bogus"])


def test_cli_table_of_verbs_imports_neither_torch_nor_fastapi():
    """`omniloom --help` builds every verb's parser; it stays fast (no torch, ~1 s) and works
    without the serve extra (no FastAPI) because heavy imports wait for a verb's run()."""
    code = ("import sys, omniloom.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'fastapi', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
