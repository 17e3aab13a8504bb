"""The calls from attnbench into the GPU libraries, and the libraries' own signatures, both read with `ast`.

`find_calls(files)` walks the source for every call whose target comes from fla, mamba_ssm, causal_conv1d
or xformers: imported names, functions of ours that return a library object (`xformers_ops()`), locals
assigned from those (`kernel = a if recurrent else b`), SimpleNamespace fields, and the parameters that
receive them from a call of ours (`self._conv(x, kernels)`). Values are sets of dotted library paths,
propagated to a fixed point; `**common` expands where `common` is a dict(...) or {...} of constant keys.

`signature(root, path)` finds a path's definition in a library's source tree (following package
re-exports) without importing it: a function's parameters, a class's __init__ or dataclass fields.
`check(call, sig)` says what is wrong with a call under a signature: a keyword it does not declare (a
name only **kwargs would swallow counts as wrong: a misspelt keyword vanishes there), too many
positional arguments, a required one missing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

LIBRARIES = ("fla", "mamba_ssm", "causal_conv1d", "xformers")
NAMESPACE = "types.SimpleNamespace"
LOCAL = "local:"  # a function of ours: LOCAL + module.qualname


@dataclass(frozen=True)
class Call:
    file: str
    line: int
    target: str  # dotted library path
    positional: int
    keywords: tuple[str, ...]
    star_args: bool = False
    unknown_kwargs: bool = False  # a ** splat whose keys could not be read

    def where(self) -> str:
        return f"{self.file}:{self.line} {self.target}"


@dataclass
class Signature:
    positional: list[str]  # positional-or-keyword, in order (positional-only ones listed too)
    positional_only: int
    keyword_only: list[str]
    required: set[str]
    var_positional: bool
    var_keyword: bool


def is_library(path: str) -> bool:
    return path.split(".")[0] in LIBRARIES


# --- finding the calls ---------------------------------------------------------------------------

@dataclass
class Function:
    qualname: str
    module: str
    node: ast.FunctionDef | ast.AsyncFunctionDef | None  # None: a module's top level
    cls: str | None
    params: list[str] = field(default_factory=list)


class Source:
    """The functions of a set of modules, with the values their names can hold."""

    def __init__(self, files: dict[str, Path]):
        self.trees = {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, p in files.items()}
        self.files = {m: str(p) for m, p in files.items()}
        self.functions: dict[str, Function] = {}
        self.methods: dict[tuple[str, str], dict[str, str]] = {}  # (module, class) -> name -> local key
        for module, tree in self.trees.items():
            self.functions[f"{LOCAL}{module}"] = Function(module, module, None, None)
            self._collect(module, tree.body, module, None)
        self.env: dict[str, dict[str, frozenset]] = {key: {} for key in self.functions}
        self.returns: dict[str, frozenset] = {key: frozenset() for key in self.functions}
        for key, fn in self.functions.items():  # a function's name is bound in the scope that defines it
            parent = key.rsplit(".", 1)[0]
            if fn.node is not None and fn.cls is None and parent in self.functions:
                self.env[parent][fn.node.name] = frozenset({key})

    def _collect(self, module: str, body, prefix: str, cls: str | None) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{LOCAL}{prefix}.{node.name}"
                a = node.args
                params = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                self.functions[key] = Function(f"{prefix}.{node.name}", module, node, cls, params)
                if cls is not None:
                    self.methods.setdefault((module, cls), {})[node.name] = key
                self._collect(module, node.body, f"{prefix}.{node.name}", None)
            elif isinstance(node, ast.ClassDef):
                self._collect(module, node.body, f"{prefix}.{node.name}", node.name)

    def scope_nodes(self, key: str):
        """The statements of a function (or a module's top level), not those of functions inside it."""
        fn = self.functions[key]
        body = self.trees[fn.module].body if fn.node is None else fn.node.body
        nested = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        stack = [node for node in body if not isinstance(node, nested)]
        while stack:
            node = stack.pop()
            yield node
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, nested):
                    stack.append(child)

    def lookup(self, key: str, name: str, before: dict | None = None) -> frozenset:
        """A name's values in a scope, else in the enclosing functions', else in the module's. `before`:
        what the statements before a call in its own block bound (they win over the scope's union)."""
        if before and name in before:
            return before[name]
        found = self.env[key].get(name)
        if found is not None or self.functions[key].node is None:
            return found or frozenset()
        parent = key.rsplit(".", 1)[0]
        while parent not in self.functions:  # a class body is no scope of its methods
            parent = parent.rsplit(".", 1)[0]
        return self.lookup(parent, name)

    def evaluate(self, key: str, node, before: dict | None = None) -> frozenset:
        if isinstance(node, ast.Name):
            return self.lookup(key, node.id, before)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                fn = self.functions[key]
                method = self.methods.get((fn.module, self._class_of(key) or ""), {}).get(node.attr)
                if method is not None:
                    return frozenset({method})
            bases = self.evaluate(key, node.value, before)
            return frozenset(v for base in bases for v in _attribute(base, node.attr))
        if isinstance(node, ast.Call):
            found = set()
            for target in self.evaluate(key, node.func, before):
                if isinstance(target, str) and target.startswith(LOCAL) and target in self.returns:
                    found |= self.returns[target]
                elif target == NAMESPACE:
                    found.add(("namespace", tuple(sorted((k.arg, self.evaluate(key, k.value, before))
                                                         for k in node.keywords if k.arg))))
            return frozenset(found)
        if isinstance(node, ast.IfExp):
            return self.evaluate(key, node.body, before) | self.evaluate(key, node.orelse, before)
        if isinstance(node, ast.BoolOp):
            return frozenset().union(*(self.evaluate(key, v, before) for v in node.values))
        return frozenset()

    def _class_of(self, key: str) -> str | None:
        while key in self.functions:
            if self.functions[key].cls is not None:
                return self.functions[key].cls
            key = key.rsplit(".", 1)[0]
        return None

    def _bind(self, key: str, name: str, value: frozenset) -> bool:
        old = self.env[key].get(name, frozenset())
        if value <= old:
            return False
        self.env[key][name] = old | value
        return True

    def _imported(self, key: str, node) -> list[tuple[str, frozenset]]:
        bound = []
        if isinstance(node, ast.Import):
            for alias in node.names:
                path = alias.name if alias.asname else alias.name.split(".")[0]
                bound.append((alias.asname or path, frozenset({alias.name if alias.asname else path})))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                path = f"{node.module}.{alias.name}"
                local = f"{LOCAL}{path}"
                value = local if local in self.functions else path
                bound.append((alias.asname or alias.name, frozenset({value})))
        return [(n, v) for n, v in bound
                if any(is_library(x) or x.startswith(LOCAL) or x == NAMESPACE for x in v)]

    def step(self) -> bool:
        """One pass over every scope; True when some value grew."""
        changed = False
        for key in self.functions:
            for node in self.scope_nodes(key):
                for name, value in self._imported(key, node):
                    changed |= self._bind(key, name, value)
                if isinstance(node, ast.Assign):
                    value = self.evaluate(key, node.value)
                    for target in node.targets:
                        if isinstance(target, ast.Name) and value:
                            changed |= self._bind(key, target.id, value)
                elif isinstance(node, ast.Return) and node.value is not None:
                    value = self.evaluate(key, node.value)
                    if not value <= self.returns[key]:
                        self.returns[key] = self.returns[key] | value
                        changed = True
                elif isinstance(node, ast.Call):
                    changed |= self._bind_arguments(key, node)
        return changed

    def _bind_arguments(self, key: str, call: ast.Call) -> bool:
        """A call of a function of ours passes its arguments' values to its parameters."""
        changed = False
        for target in self.evaluate(key, call.func):
            if not (isinstance(target, str) and target.startswith(LOCAL)) or target not in self.functions:
                continue
            callee = self.functions[target]
            params = callee.params[1:] if callee.cls is not None else callee.params  # self
            for name, arg in zip(params, call.args, strict=False):
                changed |= self._bind(target, name, self.evaluate(key, arg))
            for kw in call.keywords:
                if kw.arg in callee.params:
                    changed |= self._bind(target, kw.arg, self.evaluate(key, kw.value))
        return changed

    def solve(self) -> None:
        for _ in range(50):
            if not self.step():
                return
        raise RuntimeError("the call walk did not settle")

    def _bound_before(self, key: str, call: ast.Call) -> dict:
        """What the statements before `call`'s statement in its own block bind, in order: an if/else
        whose branches each assign `kernel = ...` then call it calls each branch's own value."""
        fn = self.functions[key]
        body = self.trees[fn.module].body if fn.node is None else fn.node.body
        block, index = _block_of(body, call)
        bound: dict = {}
        for stmt in block[:index]:
            for name, value in self._imported(key, stmt):
                bound[name] = value
            if isinstance(stmt, ast.Assign):
                value = self.evaluate(key, stmt.value, bound)
                for target in stmt.targets:
                    if isinstance(target, ast.Name):
                        bound[target.id] = value
        return bound

    def calls(self) -> list[Call]:
        found = []
        for key, fn in self.functions.items():
            for node in self.scope_nodes(key):
                if not isinstance(node, ast.Call):
                    continue
                values = self.evaluate(key, node.func, self._bound_before(key, node))
                targets = sorted(t for t in values if isinstance(t, str) and is_library(t))
                if not targets:
                    continue
                keywords, unknown = self._keywords(key, node)
                for target in targets:
                    found.append(Call(self.files[fn.module], node.lineno, target,
                                      sum(not isinstance(a, ast.Starred) for a in node.args), tuple(keywords),
                                      any(isinstance(a, ast.Starred) for a in node.args), unknown))
        return sorted(set(found), key=lambda c: (c.file, c.line, c.target))

    def _keywords(self, key: str, call: ast.Call) -> tuple[list[str], bool]:
        names, unknown = [], False
        for kw in call.keywords:
            if kw.arg is not None:
                names.append(kw.arg)
                continue
            keys = self._dict_keys(key, kw.value)
            unknown |= keys is None
            names += keys or []
        return names, unknown

    def _dict_keys(self, key: str, node) -> list[str] | None:
        """The constant keys of a dict(...) or {...}, directly or through the local name assigned one."""
        if isinstance(node, ast.Name):
            assigned = [n.value for n in self.scope_nodes(key) if isinstance(n, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == node.id for t in n.targets)]
            return self._dict_keys(key, assigned[0]) if len(assigned) == 1 else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" \
                and not node.args and all(k.arg for k in node.keywords):
            return [k.arg for k in node.keywords]
        if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) and isinstance(k.value, str)
                                              for k in node.keys):
            return [k.value for k in node.keys]
        return None

    def imported_library_names(self) -> set[tuple[str, int, str]]:
        """(file, line, dotted path) of every import from a library, wherever it stands."""
        found = set()
        for module, tree in self.trees.items():
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    paths = [a.name for a in node.names if is_library(a.name)]
                elif isinstance(node, ast.ImportFrom) and node.module and is_library(node.module):
                    paths = [f"{node.module}.{a.name}" for a in node.names]
                else:
                    continue
                found |= {(self.files[module], node.lineno, path) for path in paths}
        return found


def _block_of(body: list, node) -> tuple[list, int]:
    """The innermost statement list holding `node`, and the index of the statement there that holds it."""
    for i, stmt in enumerate(body):
        if any(child is node for child in ast.walk(stmt)):
            for field_name in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(stmt, field_name, None)
                if isinstance(inner, list) and inner and not isinstance(stmt, ast.ClassDef):
                    blocks = [h.body for h in inner] if field_name == "handlers" else [inner]
                    for block in blocks:
                        if any(child is node for s in block for child in ast.walk(s)):
                            return _block_of(block, node)
            return body, i
    return body, len(body)


def _attribute(base, attr: str):
    if isinstance(base, str) and (is_library(base) or base == NAMESPACE):
        yield f"{base}.{attr}"
    elif isinstance(base, tuple) and base[0] == "namespace":
        for name, value in base[1]:
            if name == attr:
                yield from value


def module_files(root: Path, folders: tuple[str, ...]) -> dict[str, Path]:
    """{dotted module name: file} of the .py files under root/folder for each folder."""
    files = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def find_calls(files: dict[str, Path]) -> tuple[list[Call], Source]:
    source = Source(files)
    source.solve()
    return source.calls(), source


# --- the libraries' signatures --------------------------------------------------------------------

def _module_file(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def definition(root: Path, path: str, depth: int = 0):
    """(the FunctionDef or ClassDef of a dotted library path, its module's dotted name, its tree)."""
    if depth > 20:
        raise LookupError(f"{path}: re-exports go round in circles")
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module, rest = ".".join(parts[:cut]), parts[cut:]
        file = _module_file(root, module)
        if file is None:
            continue
        if len(rest) > 1 and _module_file(root, f"{module}.{rest[0]}"):
            continue  # a submodule: resolved at a longer cut
        tree = _parsed(file)
        found = _lookup_name(root, module, file, tree, rest[0], depth)
        if found is None:
            raise LookupError(f"{path}: {module} defines no {rest[0]!r}")
        if len(rest) == 1:
            return found
        if isinstance(found, str):  # a re-exported module: continue from there
            return definition(root, ".".join([found, *rest[1:]]), depth + 1)
        raise LookupError(f"{path}: attribute of a non-module")
    raise LookupError(f"{path}: no module of it in {root}")


def _lookup_name(root: Path, module: str, file: Path, tree: ast.Module, name: str, depth: int):
    """A name's definition in a module: (node, module, tree), or a dotted module name it is bound to."""
    package = module if file.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node, module, tree
    for node in reversed(tree.body):  # the last binding wins
        names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        if isinstance(node, ast.Assign) and name in names:
            if isinstance(node.value, ast.Name):
                return _lookup_name(root, module, file, tree, node.value.id, depth + 1)
        for stmt in _imports_in(node):
            source = _absolute(stmt, package)
            for alias in stmt.names:
                if alias.name == "*":
                    starred = _module_file(root, source)
                    found = starred and _lookup_name(root, source, starred, _parsed(starred), name, depth + 1)
                    if found:
                        return found
                elif (alias.asname or alias.name) == name:
                    if _module_file(root, f"{source}.{alias.name}"):
                        return f"{source}.{alias.name}"
                    return definition(root, f"{source}.{alias.name}", depth + 1)
    if _module_file(root, f"{module}.{name}"):
        return f"{module}.{name}"
    return None


def _imports_in(node):
    """ImportFrom statements at a module's top level, also inside try/except and if blocks."""
    if isinstance(node, ast.ImportFrom):
        yield node
    elif isinstance(node, (ast.Try, ast.If)):
        for child in [*node.body, *getattr(node, "orelse", []), *(h for x in getattr(node, "handlers", [])
                                                                   for h in x.body)]:
            yield from _imports_in(child)


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _function_signature(node, drop_first: bool = False) -> Signature:
    a = node.args
    positional = [p.arg for p in (*a.posonlyargs, *a.args)]
    defaults = len(a.defaults)
    required = set(positional[: len(positional) - defaults])
    required |= {p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is None}
    only = len(a.posonlyargs)
    if drop_first and positional:
        required.discard(positional[0])
        positional, only = positional[1:], max(only - 1, 0)
    return Signature(positional, only, [p.arg for p in a.kwonlyargs], required, a.vararg is not None,
                     a.kwarg is not None)


def _is_dataclass(node: ast.ClassDef) -> bool:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if (isinstance(target, ast.Name) and target.id == "dataclass") or \
                (isinstance(target, ast.Attribute) and target.attr == "dataclass"):
            return True
    return False


def _class_signature(root: Path, node: ast.ClassDef, module: str, tree: ast.Module, depth: int) -> Signature:
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            return _function_signature(item, drop_first=True)
    inherited = None
    for base in node.bases:  # the first base that declares a constructor (single inheritance in practice)
        if not isinstance(base, (ast.Name, ast.Attribute)):
            continue
        dotted = ast.unparse(base)
        try:
            where = f"{module}.{dotted}" if isinstance(base, ast.Name) else dotted
            found = definition(root, where, depth + 1)
        except LookupError:
            raise LookupError(f"{node.name}: its base {dotted} is not in the library's source") from None
        if not isinstance(found, str) and isinstance(found[0], ast.ClassDef):
            inherited = _class_signature(root, found[0], found[1], found[2], depth + 1)
            break
    if _is_dataclass(node):
        fields = [(s.target.id, s.value is not None) for s in node.body
                  if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                  and "ClassVar" not in ast.unparse(s.annotation)]
        base = inherited or Signature([], 0, [], set(), False, False)
        names = [*base.positional, *(f for f, _ in fields if f not in base.positional)]
        return Signature(names, 0, base.keyword_only, base.required | {f for f, d in fields if not d},
                         False, False)
    return inherited or Signature([], 0, [], set(), False, False)


def _method(root: Path, path: str, depth: int = 0) -> Signature:
    """The signature of `Class.method` (a classmethod or method: its first parameter dropped; a
    staticmethod's kept), the method found in the class or, in order, its bases."""
    owner, _, name = path.rpartition(".")
    found = definition(root, owner, depth)
    if isinstance(found, str) or not isinstance(found[0], ast.ClassDef):
        raise LookupError(f"{path}: attribute of a non-class")
    node, module, _ = found
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == name:
            static = any(ast.unparse(d) == "staticmethod" for d in item.decorator_list)
            return _function_signature(item, drop_first=not static)
    for base in node.bases:
        if isinstance(base, (ast.Name, ast.Attribute)) and depth < 20:
            where = f"{module}.{ast.unparse(base)}" if isinstance(base, ast.Name) else ast.unparse(base)
            try:
                return _method(root, f"{where}.{name}", depth + 1)
            except LookupError:
                continue
    raise LookupError(f"{path}: {node.name} and its bases define no {name!r}")


def signature(root: Path, path: str) -> Signature:
    try:
        found = definition(root, path)
    except LookupError as e:
        if "attribute of a non-module" not in str(e):
            raise
        return _method(root, path)  # Class.method (xformers' BlockDiagonalMask.from_seqlens)
    if isinstance(found, str):
        raise LookupError(f"{path} is a module, not a callable")
    node, module, tree = found
    if isinstance(node, ast.ClassDef):
        return _class_signature(root, node, module, tree, 0)
    return _function_signature(node)


def check(call: Call, sig: Signature) -> list[str]:
    """What is wrong with a call under a signature (empty: nothing)."""
    problems = []
    if call.unknown_kwargs:
        problems.append("a ** argument whose keys cannot be read: the keywords cannot be checked")
    if call.positional > len(sig.positional) and not sig.var_positional:
        problems.append(f"{call.positional} positional arguments, the function takes {len(sig.positional)}")
    by_position = set(sig.positional[: call.positional])
    named = set(sig.positional[sig.positional_only:]) | set(sig.keyword_only)
    for kw in call.keywords:
        if kw not in named:
            extra = " (only **kwargs would take it)" if sig.var_keyword else ""
            problems.append(f"keyword {kw!r} is not a parameter{extra}")
        elif kw in by_position:
            problems.append(f"{kw!r} is given by position and by keyword")
    if not call.star_args and not call.unknown_kwargs:
        missing = sorted(sig.required - by_position - set(call.keywords))
        if missing:
            problems.append(f"required argument(s) missing: {', '.join(missing)}")
    return problems
