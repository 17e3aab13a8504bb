"""The package metadata and the sources stay honest: every dependency is used, every cited file exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("harness", "suites", "variants") for p in (ROOT / d).rglob("*.py")]
# Distribution name -> the module it installs, where the two differ.
MODULE_OF = {"nvidia-ml-py": "pynvml", "pytest-benchmark": "pytest_benchmark", "pyyaml": "yaml"}


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower()


def test_every_runtime_dependency_is_imported_somewhere():
    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    deps = re.findall(r'^\s*"([^"]+)"', block.group(1), re.MULTILINE)
    assert "numpy" in deps
    code = "\n".join(p.read_text() for p in SOURCES)
    for dist in map(requirement_name, deps):
        module = MODULE_OF.get(dist, dist.replace("-", "_"))
        assert re.search(rf"^\s*(import|from) {module}\b", code, re.MULTILINE), f"{dist} is never imported"


def test_files_cited_in_the_sources_exist_in_the_repository():
    cited = {(p, m) for p in SOURCES for m in re.findall(r"[\w./-]+/[\w.-]+\.md\b", p.read_text())}
    missing = [f"{p.relative_to(ROOT)} cites {m}" for p, m in cited if not (ROOT / m).is_file()]
    assert not missing, missing


def test_the_torch_floor_names_the_api_that_sets_it():
    text = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=([\d.]+)"', text)
    assert floor and floor.group(1) == "2.5"
    comment = text[: floor.start()].rsplit("dependencies = [", 1)[1]
    assert "FlexAttention" in comment and "harness.compiling" in comment
