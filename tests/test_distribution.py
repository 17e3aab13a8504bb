"""tests/conftest.py's `distribute`: the order a pytest-xdist worker hands its collection to the scheduler
(`nox -s tests`: worksteal)."""

from tests.conftest import distribute

pytest_plugins = ("pytester",)  # real items, collected in this process

FEW = """
import pytest

def test_fast_a():
    pass

@pytest.mark.slow
def test_slow():
    pass

def test_fast_b():
    pass
"""
MORE = """
import pytest

@pytest.mark.slow
def test_slow_too():
    pass

def test_fast_c():
    pass
"""


class Worker:
    """A worker's config, as far as distribute reads it: pytest-xdist gives each worker `workerinput`."""

    workerinput = {"workerid": "gw0"}


class Controller:
    """The controller's config, or a plain pytest run's: no workerinput."""


def test_a_worker_puts_the_slow_tests_first_and_keeps_each_files_tests_together(pytester):
    pytester.makepyfile(test_few=FEW, test_more=MORE)
    items, _ = pytester.inline_genitems()
    distribute(Worker(), items)
    names = ["test_slow", "test_slow_too", "test_fast_a", "test_fast_b", "test_fast_c"]
    assert [i.name for i in items] == names


def test_outside_a_worker_the_collection_order_is_kept(pytester):
    pytester.makepyfile(test_few=FEW, test_more=MORE)
    items, _ = pytester.inline_genitems()
    before = [i.nodeid for i in items]
    distribute(Controller(), items)
    assert [i.nodeid for i in items] == before
