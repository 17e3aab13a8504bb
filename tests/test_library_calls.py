"""Every call from variants/ and harness/ into fla, mamba_ssm, causal_conv1d and xformers passes keywords
and arguments its pinned release accepts: checked against the real signatures, read with `ast` from the
fla-core wheel and the mamba-ssm, causal-conv1d and xformers source distributions (pyproject.toml's
`gpu` and `mamba` pins), never imported. No GPU runs these calls here: this is their first check.

The pinned files are downloaded with pip once into .library-sources/ (gitignored); a failed download
fails the test. The sdists' metadata is prepared without build isolation (their setup.py imports torch)
and with their CUDA builds skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import library_calls as lc

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".library-sources"
MODULE_OF = {"fla-core": "fla", "mamba-ssm": "mamba_ssm", "causal-conv1d": "causal_conv1d",
             "xformers": "xformers"}
WHEEL = {"fla-core"}  # read from the wheel; the others from their source distributions
NO_CUDA_BUILD = {"MAMBA_SKIP_CUDA_BUILD": "TRUE", "CAUSAL_CONV1D_SKIP_CUDA_BUILD": "TRUE"}
SEARCHED = ("variants", "harness")


def pins() -> dict[str, str]:
    """{distribution: version} of the libraries pinned in pyproject's gpu and mamba extras."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"]
    found = {}
    for requirement in (*extras["gpu"], *extras["mamba"]):
        name, _, version = requirement.partition("==")
        if name in MODULE_OF:
            assert version, f"{name} is not pinned exactly in pyproject.toml ({requirement})"
            found[name] = version
    assert set(found) == set(MODULE_OF), f"pyproject.toml pins {sorted(found)}, expected {sorted(MODULE_OF)}"
    return found


def fetch(dist: str, version: str) -> Path:
    """The root of `dist`'s importable source (where its top-level package lies), downloaded once."""
    target = CACHE / f"{dist}-{version}"
    done = target / ".complete"
    if not done.is_file():
        target.mkdir(parents=True, exist_ok=True)
        kind = (["--only-binary", ":all:"] if dist in WHEEL
                else ["--no-binary", ":all:", "--no-build-isolation"])
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *kind, "--dest",
                        str(target), f"{dist}=={version}"], check=True, env={**os.environ, **NO_CUDA_BUILD},
                       capture_output=True, text=True)
        archive = next(p for p in target.iterdir() if p.suffix in (".whl", ".gz"))
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as z:
                z.extractall(target / "src")
        else:
            with tarfile.open(archive) as t:
                t.extractall(target / "src", filter="data")
        done.touch()
    roots = [p.parent for p in (target / "src").rglob("__init__.py")
             if p.parent.name == MODULE_OF[dist] and p.parent.parent.name != MODULE_OF[dist]]
    roots = sorted(roots, key=lambda p: len(p.parts))
    assert roots, f"no {MODULE_OF[dist]} package in {target}"
    return roots[0].parent


@pytest.fixture(scope="session")
def library_roots() -> dict[str, Path]:
    """{top-level module: the folder holding it} for each pinned library (downloads run side by side)."""
    wanted = pins()
    with ThreadPoolExecutor(len(wanted)) as pool:
        futures = {MODULE_OF[d]: pool.submit(fetch, d, v) for d, v in wanted.items()}
    try:
        return {module: future.result() for module, future in futures.items()}
    except subprocess.CalledProcessError as e:  # no skip: a check that cannot run has not passed
        pytest.fail(f"downloading a pinned library failed: {' '.join(e.cmd)}\n{e.stderr[-2000:]}")


def calls_of(folders=SEARCHED, root: Path = ROOT):
    return lc.find_calls(lc.module_files(root, folders))


def problems(calls, roots) -> list[str]:
    found = []
    for call in calls:
        root = roots[call.target.split(".")[0]]
        try:
            sig = lc.signature(root, call.target)
        except LookupError as e:
            found.append(f"{call.where()}: {e}")
            continue
        found += [f"{call.where()}: {p}" for p in lc.check(call, sig)]
    return found


@pytest.mark.slow  # the pinned libraries' sources
def test_every_call_into_the_gpu_libraries_matches_the_pinned_signature(library_roots):
    calls, _ = calls_of()
    assert {c.target.split(".")[0] for c in calls} == set(lc.LIBRARIES)  # every library has a call site
    assert problems(calls, library_roots) == []


def test_every_imported_library_function_is_called_somewhere_the_walk_sees(library_roots):
    """A call the walk cannot follow (a new way of reaching a library) leaves its import without a call."""
    calls, source = calls_of()
    called = {c.target for c in calls}
    imported = source.imported_library_names()
    pattern = re.compile(rf"^\s*(from|import)\s+({'|'.join(lc.LIBRARIES)})\b")
    grep = {(str(p), i + 1) for p in lc.module_files(ROOT, SEARCHED).values()
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()) if pattern.match(line)}
    assert {(f, line) for f, line, _ in imported} == grep  # the walk sees every import a grep sees
    for file, line, path in imported:
        found = lc.definition(library_roots[path.split(".")[0]], path)
        if isinstance(found, str):  # a module (import xformers.ops): its functions are reached by attribute
            assert any(c.startswith(found + ".") for c in called), f"{file}:{line}: no call into {path}"
        else:
            assert path in called, f"{file}:{line}: {path} is imported but no call of it is found"


FAULTY = '''
    from types import SimpleNamespace

    def _kernels():
        from fla.ops.gla import chunk_gla, fused_recurrent_gla
        return SimpleNamespace(chunk=chunk_gla, recurrent=fused_recurrent_gla)

    def gla(q, k, v, g, recurrent):
        kernels = _kernels()
        common = dict(scale=1.0, output_final_state=True)
        if recurrent:
            return kernels.recurrent(q, k, v, gk=g, **common)
        return kernels.chunk(q, k, v, g=g, scael=1.0)

    def conv(x, w):
        from causal_conv1d import causal_conv1d_fn
        return causal_conv1d_fn(x, w, None, None, None, False, None, "silu", "extra")

    def scan(delta):
        import mamba_ssm.ops.selective_scan_interface as ops
        return ops.selective_scan_fn(delta=delta)
'''


def test_the_check_fails_a_keyword_the_library_does_not_have(library_roots, tmp_path):
    (tmp_path / "variants").mkdir()
    (tmp_path / "variants" / "faulty.py").write_text(textwrap.dedent(FAULTY))
    calls, _ = calls_of(("variants",), tmp_path)
    assert [c.target for c in calls] == ["fla.ops.gla.fused_recurrent_gla", "fla.ops.gla.chunk_gla",
                                         "causal_conv1d.causal_conv1d_fn",
                                         "mamba_ssm.ops.selective_scan_interface.selective_scan_fn"]
    found = problems(calls, library_roots)
    assert found[0].endswith("fla.ops.gla.chunk_gla: keyword 'scael' is not a parameter")
    assert found[1].endswith("9 positional arguments, the function takes 8")
    assert "required argument(s) missing: A, B, C, u" in found[2]
    assert len(found) == 3  # the recurrent call, through the namespace and **common, is right
