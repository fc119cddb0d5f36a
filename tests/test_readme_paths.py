"""The README's own paths work: one environment for every command, data folders out of git, and docs and
--help that speak of what a user has (no issue numbers, no ../shared, no command that rewrites a kept file)."""
from __future__ import annotations

import contextlib
import io
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACTIVATE = "source .venv/bin/activate"
# Entry points a user runs, by module or path; the benchmarks and tools.mutate may name ../shared (where CI
# keeps the reference material they fall back to), never an issue.
USER_TOOLS = ("sample.py", "demo.py", "dataset/div2h5.py", "x2/train.py", "tools.visualize", "tools.export_onnx",
              "tools.gate_activity", "tools.gate_ablation_table", "tools.fetch_weights")
MAINTAINER_TOOLS = ("tools.mutate", "tools.benchmarks.inference", "tools.benchmarks.alternatives",
                    "tools.benchmarks.complexity", "tools.benchmarks.memory_format", "tools.benchmarks.training",
                    "tools.benchmarks.checkpoint_save")
ISSUE = re.compile(r"\bissues?\b|\bthe lead\b", re.IGNORECASE)


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.DOTALL)


def _user_docs() -> dict[Path, str]:
    """Every markdown page a user reads, less the sections about how the tests find their data."""
    pages = [ROOT / "README.md", ROOT / "checkpoint" / "README.md", ROOT / "dataset" / "README.md",
             *sorted((ROOT / "docs").rglob("*.md"))]
    docs = {}
    for page in pages:
        sections = re.split(r"(?m)^(?=#+ )", page.read_text())
        docs[page] = "".join(s for s in sections if "the tests" not in s.split("\n", 1)[0])
    return docs


def test_readme_runs_every_command_in_the_activated_environment():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    setup = blocks[0].splitlines()
    assert ACTIVATE in [line.split("#")[0].strip() for line in setup], blocks[0]
    after = "\n".join(setup[[line.split("#")[0].strip() for line in setup].index(ACTIVATE) + 1:] + blocks[1:])
    assert ".venv/" not in after, after
    commands = [line.split()[0] for line in after.splitlines() if line.strip() and not line.startswith(" ")]
    assert commands and set(commands) == {"python"}, commands


def test_docs_never_mix_the_environments_python():
    """Pages other than the README assume its set-up ran: plain `python` and `pip`, never the venv's paths."""
    for page, text in _user_docs().items():
        if page != ROOT / "README.md":
            for block in _bash_blocks(text):
                assert ".venv/bin/" not in block.replace(ACTIVATE, ""), page


def test_ci_runs_the_readmes_test_command():
    """.ci/run runs the README's test command, in the environment it has just made."""
    command = re.search(r"(python -m pytest|pytest)[^`\n]*", (ROOT / "README.md").read_text()).group(0).strip()
    assert command == "python -m pytest -q"
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(f".venv/bin/{command}")


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_data_under_dataset_is_ignored_and_its_code_is_not():
    data = ["dataset/benchmark/Set5/image_SRF_2/img_001_SRF_2_HR.png", "dataset/benchmark/BSD100/HR/3096.png",
            "dataset/DIV2K/DIV2K_train_HR/0001.png", "dataset/DIV2K_train_HR/0001.png", "dataset/DIV2K_train.h5",
            "dataset/photos/a.jpg", "results/demo/results.md", "results/mine/speed_inference.md",
            "checkpoint/DSRNet_x2_600000.pth"]
    tracked = subprocess.run(["git", "ls-files", "dataset"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    code = [*tracked, "dataset/README.md", "dataset/a_new_module.py"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, capture_output=True,
                          text=True, input="\n".join(data + code) + "\n")
    assert sorted(proc.stdout.split()) == sorted(data), proc.stdout + proc.stderr


def test_user_docs_name_no_issue_and_no_shared_folder():
    for page, text in _user_docs().items():
        assert not ISSUE.search(text), (page, ISSUE.search(text).group(0))
        assert "../shared" not in text, page


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_docs_never_tell_a_user_to_rewrite_a_kept_report():
    """A reader running a documented benchmark writes their own report, never over one kept in git."""
    targets = set()
    for text in _user_docs().values():
        targets |= set(re.findall(r"--(?:report|output)\s+(results/[^\s`)]+)", text))
    assert targets
    kept = subprocess.run(["git", "ls-files", "--", *sorted(targets)], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.split()
    assert kept == []


def _help(tool: str) -> str:
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [tool, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
            if tool.endswith(".py"):
                runpy.run_path(str(ROOT / tool), run_name="__main__")
            else:
                runpy.run_module(tool, run_name="__main__", alter_sys=False)
    finally:
        sys.argv = argv
    assert done.value.code in (0, None), tool
    return out.getvalue()


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("tool", USER_TOOLS + MAINTAINER_TOOLS)
def test_help_speaks_of_what_a_user_has(tool):
    text = _help(tool)
    assert "usage:" in text
    assert not ISSUE.search(text), ISSUE.search(text).group(0)
    if tool in USER_TOOLS:
        assert "../shared" not in text
