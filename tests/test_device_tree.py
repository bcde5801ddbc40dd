"""examples/device_tree.sh: what a device call sends, slimmed and restored without losing a file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "device_tree.sh"
pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None,
                                reason="needs git and bash")


def _sh(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "examples/device_tree.sh", *args], cwd=repo, capture_output=True, text=True,
                          check=check)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    files = {"src/pkg/code.py": b"x = 1\n", "src/pkg/assets/big/model.bin": b"\0" * 3_000_000,
             "src/pkg/assets/lang-es/delta.bin": b"\1" * 2_000_000, "docs/page.md": b"# page\n",
             "examples/device_tree.sh": SCRIPT.read_bytes()}
    for name, data in files.items():
        (r / name).parent.mkdir(parents=True, exist_ok=True)
        (r / name).write_bytes(data)
    (r / ".gitignore").write_text("/ignored/\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=r, check=True)
    subprocess.run(["git", "add", "-A"], cwd=r, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=r, check=True)
    return r


def _mib(out: str) -> tuple[float, float, float]:
    # "working tree A MiB + carried B MiB = C MiB of 64 MiB (...)"
    w = out.split()
    return float(w[2]), float(w[6]), float(w[9])


def test_size_counts_the_tree_and_the_carried_paths_not_what_git_ignores(repo: Path):
    (repo / "ignored").mkdir()
    (repo / "ignored" / "wheel.whl").write_bytes(b"\2" * 1_048_576)
    (repo / "untracked.txt").write_bytes(b"\3" * 524_288)  # untracked, not ignored: it travels
    tree, carried, total = _mib(_sh(repo, "size").stdout)
    assert tree == pytest.approx(5.3, abs=0.05) and carried == 0
    tree2, carried2, total2 = _mib(_sh(repo, "size", "ignored").stdout)
    assert (tree2, carried2, total2) == (tree, 1.0, pytest.approx(tree + 1.0, abs=0.05))
    over = _sh(repo, "size", check=False)
    assert over.returncode == 0
    (repo / "ignored" / "huge.bin").write_bytes(b"\0" * (64 * 1024 * 1024))
    over = _sh(repo, "size", "ignored", check=False)
    assert over.returncode == 1 and "OVER" in over.stdout
    assert _sh(repo, "size", "missing", check=False).returncode == 1


def test_slim_keeps_what_it_is_told_and_restore_brings_every_file_back(repo: Path):
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    out = _sh(repo, "slim", "src", "!src/pkg/assets/lang-*").stdout
    left = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts)
    # the script itself and .gitignore stay; docs and lang-es go
    assert left == [".gitignore", "examples/device_tree.sh", "src/pkg/assets/big/model.bin", "src/pkg/code.py"]
    assert "2 tracked files left out" in out
    assert _mib(_sh(repo, "size").stdout)[0] == pytest.approx(2.9, abs=0.05)
    # a second slim starts from the whole tree again
    _sh(repo, "slim", "docs")
    left = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert left == [".gitignore", "docs/page.md", "examples/device_tree.sh"]
    _sh(repo, "restore")
    after = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before


def test_slim_refuses_a_tree_with_work_that_a_restore_would_lose(repo: Path):
    (repo / "src/pkg/code.py").write_text("x = 2\n")
    r = _sh(repo, "slim", check=False)
    assert r.returncode == 1 and "src/pkg/code.py" in r.stderr
    assert (repo / "src/pkg/code.py").read_text() == "x = 2\n" and (repo / "docs/page.md").is_file()
    (repo / "src/pkg/code.py").write_text("x = 1\n")
    (repo / "new.py").write_text("y = 1\n")
    r = _sh(repo, "slim", check=False)
    assert r.returncode == 1 and "new.py" in r.stderr and (repo / "new.py").is_file()


def test_stage_copies_what_travels(repo: Path, tmp_path: Path):
    (repo / "ignored").mkdir()
    (repo / "ignored" / "part-1").write_bytes(b"part")
    (repo / "ignored" / "other").write_bytes(b"not carried")
    _sh(repo, "slim", "src/pkg/code.py")
    dst = tmp_path / "staged"
    _sh(repo, "stage", str(dst), "ignored/part-1")
    got = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert got == [".gitignore", "examples/device_tree.sh", "ignored/part-1", "src/pkg/code.py"]


def test_restore_keeps_edits_made_while_slimmed(repo: Path):
    _sh(repo, "slim", "src")
    (repo / "src/pkg/code.py").write_text("x = 3  # a fix made after a failed call\n")
    _sh(repo, "restore")
    assert (repo / "src/pkg/code.py").read_text() == "x = 3  # a fix made after a failed call\n"
    assert (repo / "docs/page.md").read_text() == "# page\n"


def test_slim_refuses_an_edit_among_many_deletions(repo: Path):
    # a long status (thousands of deletions from an earlier slim, more than a pipe holds) must not
    # hide the one edit listed before them
    many = repo / "many"
    many.mkdir()
    for i in range(5000):
        (many / f"a_file_left_out_by_the_slim_{i:04d}.txt").write_text(str(i))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "many"], cwd=repo, check=True)
    _sh(repo, "slim", "docs", "src")
    (repo / "docs/page.md").write_text("# edited\n")
    for _ in range(5):
        r = _sh(repo, "slim", "docs", "src", check=False)
        assert r.returncode == 1 and "docs/page.md" in r.stderr
        assert (repo / "docs/page.md").read_text() == "# edited\n"


def test_slim_warns_of_a_keep_that_matches_nothing_and_takes_a_trailing_slash(repo: Path):
    r = _sh(repo, "slim", "src/", "!src/pkg/assets/lang-es/", "scr")
    assert "warning: scr matches no tracked file" in r.stderr and "src/" not in r.stderr.replace("scr", "")
    assert not (repo / "src/pkg/assets/lang-es/delta.bin").exists() and (repo / "src/pkg/code.py").is_file()


def test_it_acts_on_its_own_repository_from_anywhere(repo: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = str(repo / "examples" / "device_tree.sh")
    r = subprocess.run(["bash", script, "size"], cwd=elsewhere, capture_output=True, text=True, check=True)
    assert _mib(r.stdout)[0] == pytest.approx(4.8, abs=0.05)
    subprocess.run(["bash", script, "stage", "staged"], cwd=elsewhere, capture_output=True, text=True, check=True)
    assert (elsewhere / "staged" / "src/pkg/code.py").is_file()  # DIR is taken from where it was called
    r = subprocess.run(["bash", script, "stage", "staged"], cwd=elsewhere, capture_output=True, text=True)
    assert r.returncode == 1 and "not empty" in r.stderr
    assert subprocess.run(["bash", script, "--help"], cwd=repo / "src", capture_output=True,
                          text=True).stdout.startswith("What a call")
