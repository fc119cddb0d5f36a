"""tools/mutate.py: its mechanics on a toy project (caught, survived, stale, the file always put back), and its list
kept in step with the code."""
from pathlib import Path

from tools.mutate import MUTATIONS, Mutation, apply_and_run, table


def test_outcomes_and_the_file_put_back(tmp_path):
    (tmp_path / "mod.py").write_text("VALUE = 1  # one\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mod.py").write_text("from mod import VALUE\n\n\ndef test():\n    assert VALUE == 1\n")
    tests = ("tests/test_mod.py", "tests/test_absent.py")
    cases = {
        "caught": Mutation("value", "mod.py", "VALUE = 1", "VALUE = 2", tests),
        "SURVIVED": Mutation("comment", "mod.py", "# one", "# two", tests),
        "stale": Mutation("moved", "mod.py", "VALUE = 3", "VALUE = 4", tests),
        "no tests": Mutation("untested", "mod.py", "VALUE = 1", "VALUE = 2", ("tests/test_absent.py",)),
    }
    for expected, mutation in cases.items():
        assert apply_and_run(tmp_path, mutation, timeout=120)[0] == expected
        assert (tmp_path / "mod.py").read_text() == "VALUE = 1  # one\n"
    rows = [(m, outcome, 0.0, ["tests/test_mod.py"]) for outcome, m in cases.items()]
    assert table(rows).endswith("1 of 4 caught")



def test_every_mutation_of_the_list_applies_to_this_tree():
    """A move that takes a mutated text elsewhere must take its mutation along: none may be stale."""
    root = Path(__file__).resolve().parents[1]
    stale = [m.name for m in MUTATIONS if not (root / m.file).is_file() or (root / m.file).read_text().count(m.old) != 1]
    assert len(MUTATIONS) >= 60 and stale == []
