"""Where the tests look for reference material: $DSRNET_DATA, ../shared, then the README's places in the checkout."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import find_reference, need_set, reference_candidates

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def places(tmp_path) -> dict[str, Path]:
    """A checkout beside an empty ../shared, and a separate folder with the shared layout for $DSRNET_DATA."""
    for d in ("repo/checkpoint", "repo/dataset", "shared", "mine"):
        (tmp_path / d).mkdir(parents=True)
    return {"root": tmp_path / "repo", "shared": tmp_path / "shared", "env": tmp_path / "mine"}


def _weights(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"w")
    return path


def _set5(benchmark: Path) -> Path:
    (benchmark / "Set5").mkdir(parents=True)
    return benchmark


def test_the_readmes_places_are_found(places):
    root = places["root"]
    w = _weights(root / "checkpoint" / "DSRNet_x2_600000.pth")
    b = _set5(root / "dataset" / "benchmark")
    assert find_reference("weights_x2", root, {}) == (w, f"{w} (the checkout)")
    assert find_reference("benchmark", root, {}) == (b, f"{b} (the checkout)")


def test_shared_comes_before_the_checkout_and_dsrnet_data_before_both(places):
    root = places["root"]
    _weights(root / "checkpoint" / "DSRNet_x2_600000.pth")
    shared = _weights(places["shared"] / "weights" / "DSRNet_x2_600000.pth")
    assert find_reference("weights_x2", root, {})[0] == shared
    mine = _weights(places["env"] / "weights" / "DSRNet_x2_600000.pth")
    path, where = find_reference("weights_x2", root, {"DSRNET_DATA": str(places["env"])})
    assert (path, where) == (mine, f"{mine} ($DSRNET_DATA)")


def test_each_kind_is_looked_up_on_its_own(places):
    """$DSRNET_DATA holding only the test sets still lets the weights come from the checkout."""
    root, env = places["root"], {"DSRNET_DATA": str(places["env"])}
    w = _weights(root / "checkpoint" / "DSRNet_x2_600000.pth")
    b = _set5(places["env"] / "data" / "benchmark")
    assert find_reference("weights_x2", root, env)[0] == w
    assert find_reference("benchmark", root, env)[0] == b


def test_absent_says_where_it_looked(places):
    root = places["root"]
    (root / "dataset" / "benchmark").mkdir()  # an empty folder holds no test set
    path, where = find_reference("benchmark", root, {"DSRNET_DATA": str(places["env"])})
    assert path is None
    looked = [p for p, _ in reference_candidates("benchmark", root, {"DSRNET_DATA": str(places["env"])})]
    assert looked == [places["env"] / "data" / "benchmark", places["shared"] / "data" / "benchmark",
                      root / "dataset" / "benchmark"]
    assert where.startswith("absent") and all(str(p) in where for p in looked)
    # training photos have no place in the README: only $DSRNET_DATA and ../shared
    assert find_reference("train_photos", root, {})[0] is None
    assert len(reference_candidates("train_photos", root, {})) == 1


def test_need_set_takes_b100_for_bsd100(tmp_path):
    (tmp_path / "B100").mkdir()
    assert need_set(tmp_path, "BSD100") == tmp_path / "B100"
    with pytest.raises(pytest.skip.Exception, match="Set14 is absent"):
        need_set(tmp_path, "Set14")


@pytest.mark.parametrize("quiet", [[], ["-q"]])
def test_pytest_says_where_each_kind_was_found(tmp_path, quiet):
    """One line per kind, in the header, or at the end under -q; $DSRNET_DATA holding the weights wins."""
    _weights(tmp_path / "weights" / "DSRNet_x2_600000.pth")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", *quiet,
                           str(ROOT / "tests" / "test_reference_data.py")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "DSRNET_DATA": str(tmp_path), "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = [line for line in proc.stdout.splitlines() if line.startswith("reference ")]
    assert [line.split(":")[0] for line in header] == ["reference weights_x2", "reference benchmark",
                                                     "reference train_photos"], proc.stdout
    assert header[0] == f"reference weights_x2: {tmp_path / 'weights' / 'DSRNet_x2_600000.pth'} ($DSRNET_DATA)"
