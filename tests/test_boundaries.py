"""Who may know what: the harness and the planners never name a family or a variant (the variants' hooks
say what they cost), and no variant module reaches into another's private names (shared machinery lives in
harness/, e.g. harness.flex)."""

import ast
from pathlib import Path

from harness import registry

ROOT = Path(__file__).resolve().parent.parent
PLANNERS = [ROOT / "suites" / "estimate.py", ROOT / "suites" / "frontier.py"]
NAME_FREE = sorted((ROOT / "harness").rglob("*.py")) + PLANNERS


def registered_names() -> set[str]:
    variants = registry.all_variants()
    return {v.family for v in variants} | {v.name for v in variants}


def named_literals(source: str, names: set[str]) -> list[str]:
    """String literals of the code (f-string parts included) that are one of `names`."""
    return sorted({node.value for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names})


def named_words(source: str, names: set[str]) -> list[str]:
    """`names` appearing as words anywhere, comments and docstrings included (a hyphenated name is one
    word: 'flash' is not found in 'flash-attn')."""
    words = set()
    for line in source.splitlines():
        for token in "".join(c if c.isalnum() or c in "-_" else " " for c in line).split():
            words.add(token.strip("-_").lower())
    return sorted(words & names)


def test_no_family_or_variant_name_in_the_harness_or_the_planners():
    names = registered_names()
    assert {"vanilla", "mamba", "linear", "flash-sdpa"} <= names
    found = {str(p.relative_to(ROOT)): named_literals(p.read_text(), names) for p in NAME_FREE}
    assert {p: n for p, n in found.items() if n} == {}


def test_the_planners_do_not_mention_a_family_even_in_prose():
    families = {v.family for v in registry.all_variants()}
    found = {str(p.relative_to(ROOT)): named_words(p.read_text(), families) for p in PLANNERS}
    assert {p: n for p, n in found.items() if n} == {}


def test_the_name_checks_find_the_names_the_planners_used_to_hold():
    names = registered_names()
    old = '''
CHUNK_LOOP_S = {"cpu": {"mamba2": 0.031, "gla": 0.016}}
def token_work(case):
    if family in ("vanilla", "flash", "sparse"):
        return f"{case.variant}"
baseline_first = table.variant.map(family).ne("vanilla")  # the reference row leads the table
'''
    assert named_literals(old, names) == ["flash", "gla", "mamba2", "sparse", "vanilla"]
    assert named_words("# mamba's scan, as in FlashAttention", {"mamba", "flash"}) == ["mamba"]
    assert named_words("flash-attn's window; mamba-ssm", {"flash", "mamba"}) == []


# --- variants reach into each other only through public names ----------------------------------------------

def private_reaches(path: Path) -> list[str]:
    """Private names (a leading underscore) of another variants module that this module imports or reads."""
    own = f"variants.{path.stem}"
    modules = {}  # local name -> the variants module it is bound to
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        from_variants = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("variants")
        if from_variants and node.level == 0:
            for alias in node.names:
                if node.module == "variants":  # `from variants import sparse`: a module
                    modules[alias.asname or alias.name] = f"variants.{alias.name}"
                elif node.module != own and alias.name.startswith("_"):
                    found.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("variants."):
                    modules[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            target = ast.unparse(node.value)
            module = modules.get(target, target if target.startswith("variants.") else None)
            if module is not None and module != own:
                found.append(f"{module}.{node.attr}")
    return sorted(found)


def test_no_variant_module_uses_another_ones_private_names():
    modules = sorted((ROOT / "variants").glob("*.py"))
    assert len(modules) > 10
    found = {p.name: private_reaches(p) for p in modules}
    assert {p: n for p, n in found.items() if n} == {}


def test_the_walk_finds_private_reaches(tmp_path):
    file = tmp_path / "sinks.py"
    file.write_text("from variants.sparse import FLEX_SUPPORT, _block_mask\n"
                    "from variants import sparse as sp\nimport variants.flash\n"
                    "def f():\n    return sp._compiled, variants.flash._sm_at_least, sp.public\n"
                    "from variants.sinks import _own\n")
    assert private_reaches(file) == ["variants.flash._sm_at_least", "variants.sparse._block_mask",
                                     "variants.sparse._compiled"]
