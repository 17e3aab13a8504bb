"""An offline wheelhouse for a GPU runner: built on a connected machine, copied, installed without network.

    python scripts/wheelhouse.py                          # wheelhouse/ for CPython 3.12, manylinux x86-64
    python scripts/wheelhouse.py --out /tmp/wh --python 3.12 --torch 2.11.0

A pre-provisioned CUDA image has torch, triton and the usual data stack (IMAGE below) but not the rest of
what attnbench needs. The wheelhouse holds exactly that rest, for the target Python and platform:
- the project's dependencies and its `gpu` and `dev` extras (pyproject.toml), with their dependencies
  as pip resolves them for the target, less the image's packages and the CUDA libraries torch brings
  (nvidia-*, cuda-*). The dependencies of the image's packages stay in: the image may hold versions too
  old for the newest releases here (pydantic 2.14 needs typing-extensions 4.16, newer than torch's; the
  newest typer needs pydantic, the image's did not), and pip skips a wheel whose package is installed;
- mamba-ssm (the `mamba` extra's pin), a source distribution whose CUDA extension compiles for a long
  time: it is built here into a pure-Python wheel with MAMBA_SKIP_CUDA_BUILD=TRUE. Mamba-2's Triton
  kernels then run and Mamba-1's fused kernels are reported unsupported (variants/mamba.py);
- setuptools, which the runner's editable install of the checkout builds with.
causal-conv1d is left out: the package is only its CUDA extension, which a runner without a compiler
cannot build (mamba falls back to PyTorch's convolution without it).

Building mamba-ssm's wheel imports torch (its setup.py does): run this script in an environment that has
torch, setuptools and packaging (the project's dev environment does). It ends by printing the one install
command for the runner; docs/gpu.md has the whole procedure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# What the runner image already has (ANCHORS: a pre-provisioned CUDA image): these stay out of the
# wheelhouse, and so do the CUDA libraries torch depends on (gigabytes, pinned by the image's torch).
IMAGE = ("torch", "triton", "numpy", "pandas", "pyarrow", "seaborn", "pytest-benchmark", "nvidia-ml-py",
         "typer", "rich")
CUDA_STACK = ("nvidia-", "cuda-")  # name prefixes
DEFAULT_TORCH, DEFAULT_TRITON = "2.11.0", "3.6.0"
EXTRAS = ("gpu", "dev")  # installed from the wheelhouse with the checkout
SOURCE_BUILT = "mamba-ssm"  # from the `mamba` extra: built here without its CUDA extension
# FORCE_BUILD: build here rather than try to download a prebuilt CUDA wheel from the project's releases.
SKIP_CUDA_BUILD = {"MAMBA_SKIP_CUDA_BUILD": "TRUE", "MAMBA_FORCE_BUILD": "TRUE"}
LEFT_OUT = {"causal-conv1d": "its only content is a CUDA extension, which needs a compiler on the runner"}


def name_of(requirement: str) -> str:
    """The normalized distribution name of a requirement string ('fla-core==0.6.0' -> 'fla-core')."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0]).lower()


def pyproject(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))


def requirements(project: dict) -> list[str]:
    """What the wheelhouse must satisfy beside the source-built package: the project's dependencies, its
    EXTRAS, and its build backend (the runner installs the checkout in editable mode)."""
    extras = project["project"]["optional-dependencies"]
    wanted = [*project["project"]["dependencies"], *(r for e in EXTRAS for r in extras[e]),
              *project["build-system"]["requires"]]
    return list(dict.fromkeys(r for r in wanted if name_of(r) not in LEFT_OUT))


def source_built(project: dict) -> str:
    """The pinned requirement of the package built here from source ('mamba-ssm==2.3.1')."""
    pins = [r for r in project["project"]["optional-dependencies"]["mamba"] if name_of(r) == SOURCE_BUILT]
    if len(pins) != 1 or "==" not in pins[0]:
        raise SystemExit(f"pyproject.toml's mamba extra must pin {SOURCE_BUILT} exactly (==)")
    return pins[0]


def image_constraints(torch_version: str, triton_version: str) -> list[str]:
    return [f"torch=={torch_version}", f"triton=={triton_version}"]


def platforms(platform: str) -> list[str]:
    """The platform tags a runner of `platform` takes: pip expands no PEP 600 tag by itself, so
    manylinux_2_28_x86_64 is spelled out down to manylinux_2_17 (alias manylinux2014) and the legacy tags."""
    found = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if found is None:
        return [platform]
    glibc, arch = int(found.group(1)), found.group(2)
    legacy = [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    return [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)] + legacy


def target_options(python: str, platform: str) -> list[str]:
    """pip's options for wheels of another interpreter and platform (binary wheels only)."""
    abi = "cp" + python.replace(".", "")
    options = ["--only-binary", ":all:", "--python-version", python, "--implementation", "cp",
               "--abi", abi, "--abi", "abi3", "--abi", "none"]
    return options + [arg for tag in platforms(platform) for arg in ("--platform", tag)]


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, **(env or {})})


def resolve(requirements: list[str], options: list[str], constraints: Path, scratch: Path) -> dict[str, str]:
    """{name: version} that pip picks for `requirements` on the target (metadata only, nothing installed)."""
    report = scratch / f"report-{len(list(scratch.iterdir()))}.json"
    pip("install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report),
        "--target", str(scratch / "target"), "--constraint", str(constraints), *options, *requirements)
    installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {name_of(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def to_download(needed: dict[str, str], provided: set[str], project: dict) -> list[str]:
    """Pins of what the runner lacks: resolved for the project, not brought by the image, not built here.
    The build backend is downloaded even where the image has it: pip builds the editable install in an
    isolated environment, which it fills from the wheelhouse alone."""
    keep = {name_of(r) for r in project["build-system"]["requires"]}
    return sorted(f"{name}=={version}" for name, version in needed.items()
                  if (name not in provided or name in keep) and name != SOURCE_BUILT)


def build_source_wheel(pin: str, out: Path) -> Path:
    """`pin`'s wheel, built from its source distribution without its CUDA extension (pure Python)."""
    before = set(out.glob("*.whl"))
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-binary", name_of(pin), "--wheel-dir", str(out),
        pin, env=SKIP_CUDA_BUILD)
    built = [w for w in set(out.glob("*.whl")) - before if name_of(w.name.split("-")[0]) == name_of(pin)]
    if not built:  # already there from an earlier run
        built = [w for w in out.glob("*.whl") if name_of(w.name.split("-")[0]) == name_of(pin)]
    if len(built) != 1 or not built[0].name.endswith("-py3-none-any.whl"):
        raise SystemExit(f"expected one pure-Python wheel of {pin}, found {[w.name for w in built]}")
    return built[0]


def install_command(out: Path, project: dict) -> str:
    extras = ",".join(EXTRAS)
    return (f"python3 -m pip install --no-index --find-links {out} -e '.[{extras}]' "
            f"{source_built(project)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "wheelhouse", help="folder to write the wheels in")
    parser.add_argument("--python", default="3.12", help="target CPython version (default 3.12)")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64", help="target wheel platform tag")
    parser.add_argument("--torch", default=DEFAULT_TORCH, help="the runner image's torch version")
    parser.add_argument("--triton", default=DEFAULT_TRITON, help="the runner image's triton version")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python):
        parser.error(f"--python must look like 3.12, got {args.python!r}")
    project = pyproject()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    mamba_wheel = build_source_wheel(source_built(project), out)
    options = target_options(args.python, args.platform)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        constraints = scratch / "image-constraints.txt"
        constraints.write_text("\n".join(image_constraints(args.torch, args.triton)) + "\n")
        needed = resolve([*requirements(project), str(mamba_wheel)], options, constraints, scratch)
        provided = {*IMAGE, *(name for name in needed if name.startswith(CUDA_STACK))}
        pins = to_download(needed, provided, project)
        pip("download", "--no-deps", "--quiet", "--dest", str(out), *options, *pins)
    (out / "requirements.txt").write_text("\n".join([*pins, source_built(project)]) + "\n")
    wheels = sorted(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"\n{len(wheels)} wheels, {size:.0f} MiB in {out} (for CPython {args.python}, {args.platform}, "
          f"torch {args.torch}); left out: " + "; ".join(f"{k} ({v})" for k, v in LEFT_OUT.items()))
    print("On the runner, in the attnbench checkout:\n  " + install_command(out, project))
    return 0


if __name__ == "__main__":
    sys.exit(main())
