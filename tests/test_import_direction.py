"""Imports run one way: model/ <- dsrnet/ <- entry points <- tools/ and demo.py (docs/contributing.md).

Every tracked .py file's imports are read with ``ast``, those inside functions included, and each arrow
between parts of the project is checked against the layer it leaves and the layer it enters. Outside the
tests, a project module is imported at the top of the file only: an import inside a function hides an arrow.
"""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"solver", "sample", "dataset.div2h5", "x2.train", "x3.train", "x4.train"}
# What each layer may import of the project (besides itself).
ALLOWED = {
    "model": set(),
    "dsrnet": {"model"},
    "dataset": set(),  # the data folder's package: only div2h5.py, an entry point, holds code
    "entry": {"model", "dsrnet", "entry"},  # x2|x3|x4/train.py run solver.py
    "app": {"model", "dsrnet", "entry", "app"},  # tools/ and demo.py: the top
    "tests": {"model", "dsrnet", "dataset", "entry", "app"},
}


def _module(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    """The layer of a project module (or of the package a dotted name starts with); None outside the project."""
    top = module.split(".")[0]
    if module in ENTRY_POINTS or any(module.startswith(e + ".") for e in ENTRY_POINTS):
        return "entry"
    if top in ("model", "dsrnet", "dataset", "tests"):
        return top
    if top in ("tools", "demo"):
        return "app"
    return None


def _imports(tree: ast.Module) -> list[tuple[str, int, bool]]:
    """(module imported, line, whether inside a function or class) for every import statement."""
    found = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, nested) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # `from dsrnet.data import imresize` names a module too: check the longest name that is one
                found.extend((f"{child.module}.{a.name}", child.lineno, nested) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def _project_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in listed.stdout.split()]


def violations(files: list[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for path in files:
        source = _module(path, root)
        layer = _layer(source)
        if layer is None:
            continue
        for target, line, nested in _imports(ast.parse(path.read_text(), str(path))):
            to = _layer(target)
            if to is None or target.split(".")[0] == "__future__":
                continue
            where = f"{path.relative_to(root)}:{line} imports {target}"
            if to != layer and to not in ALLOWED[layer]:
                problems.append(f"{where}: {layer} must not import {to}")
            if nested and layer != "tests":
                problems.append(f"{where} inside a function: import project modules at the top")
    return problems


def test_every_import_runs_down():
    files = _project_files()
    assert len(files) > 50 and any(p.name == "solver.py" for p in files)
    assert violations(files) == []


@pytest.mark.parametrize("layer_file, line, problem", [
    ("model/ops.py", "from dsrnet.errors import InputError", "model must not import dsrnet"),
    ("dsrnet/metrics.py", "from dataset.div2h5 import main", "dsrnet must not import entry"),
    ("dsrnet/metrics.py", "import solver", "dsrnet must not import entry"),
    ("dsrnet/metrics.py", "from tools import visualize", "dsrnet must not import app"),
    ("sample.py", "import demo", "entry must not import app"),
    ("dataset/__init__.py", "from dsrnet.errors import InputError", "dataset must not import dsrnet"),
    ("dsrnet/metrics.py", "def f():\n    from model import Net", "inside a function"),
])
def test_the_check_catches_an_arrow_up(tmp_path, layer_file, line, problem):
    """Each rule fails on a file that breaks it: the real file with one import added."""
    copy = tmp_path / layer_file
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text((ROOT / layer_file).read_text() + "\n\n" + line + "\n")
    found = violations([copy], tmp_path)
    assert len(found) == 1 and problem in found[0], found


def reaches_into_the_block(files: list[Path], root: Path = ROOT) -> list[str]:
    """``<expr>.wide_enhancement.<name>`` outside ``model/`` and the tests: the gate's run-time state is
    ``net.router``'s, its mode ``net.set_gate``/``net.gate_mode``'s (docs/contributing.md)."""
    found = []
    for path in files:
        if path.relative_to(root).parts[0] in ("model", "tests"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "wide_enhancement"):
                found.append(f"{path.relative_to(root)}:{node.lineno} reads .wide_enhancement.{node.attr}")
    return found


def test_outside_model_the_gate_is_reached_through_the_router(tmp_path):
    assert reaches_into_the_block(_project_files()) == []
    copy = tmp_path / "solver.py"
    copy.write_text((ROOT / "solver.py").read_text() + "\n\ndef f(net):\n    return net.wide_enhancement.router\n")
    assert reaches_into_the_block([copy], tmp_path) == ["solver.py:" + str(len(copy.read_text().splitlines()))
                                                         + " reads .wide_enhancement.router"]


def private_imports(files: list[Path], root: Path = ROOT) -> list[str]:
    """``from <project module> import _name`` outside the tests: a private name is its module's alone."""
    found = []
    for path in files:
        if path.relative_to(root).parts[0] == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and _layer(node.module) is not None:
                found += [f"{path.relative_to(root)}:{node.lineno} imports {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_file_imports_another_module_s_private_names(tmp_path):
    assert private_imports(_project_files()) == []
    copy = tmp_path / "sample.py"
    copy.write_text("from dsrnet.data.pack import _hidden\n")
    assert private_imports([copy], tmp_path) == ["sample.py:1 imports dsrnet.data.pack._hidden"]


def test_no_code_reads_argparses_private_parser_state():
    """A parser's ``_actions`` and friends may change with any Python version: code outside the tests asks
    a parser through its public API only."""
    private = {"_actions", "_option_string_actions", "_defaults"}
    found = [f"{path.relative_to(ROOT)}:{node.lineno} reads .{node.attr}"
             for path in _project_files() if path.relative_to(ROOT).parts[0] != "tests"
             for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if isinstance(node, ast.Attribute) and node.attr in private]
    assert found == []
