"""Commands that draw nothing load no plotting library: `attnbench recommend` and `attnbench list` run in a
fresh interpreter, which then reports the matplotlib and seaborn modules it holds."""

import json
import subprocess
import sys

import pytest

from tests import test_report_fixtures as fx

PLOTTING = ("matplotlib", "seaborn")
# The command line in a fresh interpreter; at exit, the plotting modules it loaded (on stderr, as JSON).
WRAPPER = """
import atexit, json, sys
atexit.register(lambda: print("PLOTTING " + json.dumps(sorted(
    m for m in sys.modules if m.split(".")[0] in {plotting!r})), file=sys.stderr))
{preload}
from harness import cli
sys.argv = ["attnbench", *sys.argv[1:]]
cli.main()
"""


def plotting_modules(*args, preload: str = "") -> tuple[subprocess.CompletedProcess, list[str]]:
    code = WRAPPER.format(plotting=PLOTTING, preload=preload)
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("PLOTTING "))
    return done, json.loads(line.removeprefix("PLOTTING "))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    rows = [r for r in fx.throughput_rows()
            if r["mode"] == "fwd" and r["dtype"] == "bfloat16" and r["causal"]]
    return fx.write_run(tmp_path_factory.mktemp("imports") / "run", rows)


@pytest.mark.slow
def test_recommend_loads_no_plotting_library(small_run):
    done, loaded = plotting_modules("recommend", small_run, "--seq-len", 4096, "--causal")
    assert done.returncode == 0, done.stderr
    assert "│ 1    │ flash-sdpa" in done.stdout  # it ranked: the command ran to its end
    assert loaded == []


@pytest.mark.slow
def test_list_loads_no_plotting_library():
    done, loaded = plotting_modules("list")
    assert done.returncode == 0, done.stderr
    assert "vanilla" in done.stdout
    assert loaded == []


@pytest.mark.slow
def test_the_check_sees_a_plotting_library_where_one_is_loaded():
    """The checks above can fail: the report's builder, looked up, brings matplotlib and seaborn in."""
    done, loaded = plotting_modules("list", preload="import harness.report; harness.report.build")
    assert done.returncode == 0, done.stderr
    assert {m.split(".")[0] for m in loaded} == set(PLOTTING)
