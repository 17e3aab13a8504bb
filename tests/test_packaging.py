"""The package metadata and the sources stay honest: every dependency is used, every library imported is
declared, every cited file exists."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra installs tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("harness", "suites", "variants") for p in (ROOT / d).rglob("*.py")]
# What ships and what a user runs: the packages, the scripts and the nox sessions.
IMPORTING = [*SOURCES, *(ROOT / "scripts").rglob("*.py"), ROOT / "noxfile.py"]
FIRST_PARTY = {"harness", "suites", "variants", "tests"}
# Import name -> distribution name, where the two differ (otherwise: "_" read as "-").
DISTRIBUTION_OF = {"pynvml": "nvidia-ml-py", "fla": "fla-core", "mamba_ssm": "mamba-ssm", "yaml": "pyyaml"}
MODULE_OF = {dist: module for module, dist in DISTRIBUTION_OF.items()}
# Dependencies used as pytest plugins, through their fixture rather than an import: distribution -> fixture.
FIXTURE_OF = {"pytest-benchmark": "benchmark"}


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalized(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip())


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(metadata: dict) -> set[str]:
    """Every distribution the project names: its dependencies and those of every extra."""
    requirements = [*metadata["dependencies"], *(r for extra in metadata["optional-dependencies"].values()
                                                 for r in extra)]
    return {requirement_name(r) for r in requirements}


def distribution_of(module: str) -> str:
    return normalized(DISTRIBUTION_OF.get(module, module))


def third_party_imports(path: Path, text: str | None = None) -> set[str]:
    """Top-level names of the absolute imports in a file that are neither the standard library's nor ours
    (imports inside functions included: an optional library is still a library)."""
    tree = ast.parse(path.read_text() if text is None else text, filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in FIRST_PARTY}


def undeclared(files: dict[Path, str | None], names: set[str]) -> dict[str, list[str]]:
    """Imported libraries whose distribution is not among `names`, with the files that import them."""
    missing: dict[str, list[str]] = {}
    for path, text in files.items():
        for module in third_party_imports(path, text):
            if distribution_of(module) not in names:
                missing.setdefault(module, []).append(str(path.relative_to(ROOT)))
    return missing


def test_every_library_imported_is_declared():
    assert undeclared(dict.fromkeys(IMPORTING), declared(project())) == {}


def test_an_undeclared_import_is_caught():
    """The check above can fail: a library nobody declared, and a declared one under another import name
    whose distribution is missing."""
    fake = ROOT / "harness" / "example.py"
    source = "import numpy\nfrom fla.ops import chunk\n\ndef f():\n    import undeclared_lib.sub\n"
    names = declared(project())
    assert undeclared({fake: source}, names) == {"undeclared_lib": ["harness/example.py"]}
    assert undeclared({fake: source}, names - {"fla-core"}) == {"undeclared_lib": ["harness/example.py"],
                                                                "fla": ["harness/example.py"]}
    assert third_party_imports(fake, "import os\nfrom harness import store\nfrom . import x\n") == set()


def test_the_import_name_map_agrees_with_the_installed_distributions():
    """Where a library is installed here, its metadata names the distribution the map gives."""
    installed = importlib.metadata.packages_distributions()
    modules = set().union(*(third_party_imports(p) for p in IMPORTING))
    checked = [m for m in modules if m in installed]
    assert "pynvml" in checked  # a runtime dependency whose import name differs: the map is exercised
    for module in checked:
        assert distribution_of(module) in {normalized(d) for d in installed[module]}, module


def test_every_runtime_dependency_is_imported_somewhere():
    deps = project()["dependencies"]
    assert "numpy" in deps
    code = "\n".join(p.read_text() for p in SOURCES)
    for dist in map(requirement_name, deps):
        if dist in FIXTURE_OF:
            test_asking_for_it = rf"^def test_\w*\([^)]*\b{FIXTURE_OF[dist]}\b"
            assert re.search(test_asking_for_it, code, re.MULTILINE), f"{dist}'s fixture is never used"
            continue
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
