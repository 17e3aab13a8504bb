"""tests/conftest.py's `distribute`: the work units pytest-xdist's loadgroup hands its workers (`nox -s
tests`), and the order it hands them out in."""

from tests.conftest import distribute

pytest_plugins = ("pytester",)  # real items, collected in this process

FEW = """
import pytest

def test_fast_a():
    pass

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.slow
@pytest.mark.xdist_group("cluster")
def test_slow_sharing_a_cluster():
    pass

def test_fast_b():
    pass
"""
MANY = "\n".join(f"def test_{i}():\n    pass\n" for i in range(5))


class Options:
    """A config's options as pytest-xdist leaves them: only --dist is read."""

    def __init__(self, dist: str):
        self.dist = dist

    def getoption(self, name, default=None):
        return self.dist if name == "dist" else default


def groups(items) -> list:
    return [next((m.args[0] for m in item.iter_markers("xdist_group")), None) for item in items]


def test_slow_tests_go_first_each_alone_and_the_rest_stay_with_their_file_largest_first(pytester):
    pytester.makepyfile(test_few=FEW, test_many=MANY)
    items, _ = pytester.inline_genitems()
    distribute(Options("loadgroup"), items)
    names = ["test_slow", "test_slow_sharing_a_cluster", *(f"test_{i}" for i in range(5)), "test_fast_a",
             "test_fast_b"]
    assert [i.name for i in items] == names
    # No group: a unit of its own. A declared group is kept whole.
    assert groups(items) == [None, "cluster", *["test_many.py"] * 5, *["test_few.py"] * 2]


def test_other_distributions_are_left_as_they_were(pytester):
    pytester.makepyfile(test_few=FEW)
    items, _ = pytester.inline_genitems()
    before = [i.nodeid for i in items]
    distribute(Options("load"), items)
    assert [i.nodeid for i in items] == before and groups(items) == [None, None, "cluster", None]
