"""Who may import whom (docs/architecture.md), read from the source: every import of every module
of colbert_fast, at module level or inside a function, relative imports resolved.

    kernels/       torch, triton and the standard library; nothing else of ours but kernels/
    reference.py   torch, typing and __future__ alone: the oracle shares no code with what it judges
    the library    (the root modules, backends/, kernels/, compat/) imports nothing of retrieval/,
                   cli/, benchmark/ or testing.py
    compat/        the public API (colbert_fast, ops, packed) and compat/ itself
    retrieval/     of the library only its public names (`colbert_fast`'s __all__), the packed
                   store, the reference oracle and files.py
    benchmark/     nothing of retrieval/, cli/ or testing.py
    testing.py     imported by no module of the package (tests/ and bench/ use it)
    everywhere     no private name of another module (`from x import _y`, or a module named _x;
                   colbert_fast._C is the one exception, loaded by extension.py alone), nothing
                   from tests/ or bench/, and no import cycle

The checker works on {module name: source}, so the tests at the bottom feed it made-up modules and
show that each rule fails on a violation, naming the module, the line and the import.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import colbert_fast

PKG = "colbert_fast"
ROOT = Path(colbert_fast.__file__).resolve().parent
REPO = ROOT.parent
STDLIB = set(getattr(sys, "stdlib_module_names", ())) | {"__future__"}

LIBRARY_ROOT = {f"{PKG}.{m}" for m in ("ops", "packed", "reference", "validation", "extension", "files", "_C")}
LIBRARY_PACKAGES = ("backends", "kernels", "compat")
UPPER_WINGS = ("retrieval", "cli", "benchmark")  # and testing.py
RETRIEVAL_MAY_USE = {PKG, f"{PKG}.packed", f"{PKG}.reference", f"{PKG}.files"}
COMPAT_MAY_USE = {PKG, f"{PKG}.ops", f"{PKG}.packed"}


@dataclasses.dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the module imported (for `from m import name`: m.name when that is a module, else m)
    name: str | None  # the name taken from `target` by `from target import name`, else None
    text: str  # the import as written

    def where(self) -> str:
        return f"{self.module} (line {self.line}: {self.text})"


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def package_sources(root: Path = ROOT) -> dict[str, tuple[str, bool]]:
    """{module name: (source, is_package)} for every .py file of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path.read_text(), is_package)
    return out


def read_imports(sources: dict[str, tuple[str, bool]]) -> list[Import]:
    """Every import statement of every module (ast.walk: function bodies too), resolved."""
    known = set(sources) | {f"{PKG}._C"}
    found = []
    for module, (source, is_package) in sources.items():
        tree = ast.parse(source, module)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(Import(module, node.lineno, alias.name, None, f"import {alias.name}"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = module.split(".") if is_package else module.split(".")[:-1]
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module
                text = f"from {'.' * node.level}{node.module or ''} import "
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in known:  # `from package import submodule`
                        found.append(Import(module, node.lineno, sub, None, text + alias.name))
                    else:
                        found.append(Import(module, node.lineno, base, alias.name, text + alias.name))
    return found


def _public_api(sources: dict[str, tuple[str, bool]]) -> set[str]:
    """The names in colbert_fast/__init__.py's __all__."""
    for node in ast.parse(sources[PKG][0]).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def _forbidden_top_names(repo: Path = REPO) -> set[str]:
    """Top-level names that would resolve to tests/ or bench/ (or their modules) if they were on sys.path."""
    names = {"tests", "bench"}
    for folder in ("tests", "bench"):
        for path in (repo / folder).rglob("*.py"):
            names.add(path.stem)
    return names - STDLIB


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # Tarjan's algorithm; the graph is small, recursion is fine
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(sources: dict[str, tuple[str, bool]], forbidden_top: set[str] | None = None) -> list[str]:
    """Every broken rule, one line each, naming the module, the line and the import."""
    forbidden_top = _forbidden_top_names() if forbidden_top is None else forbidden_top
    imports = read_imports(sources)
    public = _public_api(sources) | {"__version__"}
    library = LIBRARY_ROOT | {PKG} | {m for m in sources if any(_in(m, f"{PKG}.{p}") for p in LIBRARY_PACKAGES)}
    upper = tuple(f"{PKG}.{w}" for w in UPPER_WINGS) + (f"{PKG}.testing",)
    problems = []
    edges: dict[str, set[str]] = {m: set() for m in sources}
    for imp in imports:
        ours = _in(imp.target, PKG)
        top = imp.target.split(".")[0]
        if ours and imp.target in sources or imp.target == f"{PKG}._C":
            if imp.target != imp.module:
                edges[imp.module].add(imp.target)
        # private names, anywhere
        last = imp.target.rsplit(".", 1)[-1]
        if imp.target == f"{PKG}._C":
            if imp.module != f"{PKG}.extension":
                problems.append(f"{imp.where()}: only colbert_fast.extension loads the compiled extension")
        elif last.startswith("_") and not last.startswith("__"):
            problems.append(f"{imp.where()}: imports the private module {imp.target}")
        if imp.name and imp.name.startswith("_") and not imp.name.startswith("__"):
            problems.append(f"{imp.where()}: imports the private name {imp.name} of {imp.target}")
        if top in forbidden_top and not ours:
            problems.append(f"{imp.where()}: imports from tests/ or bench/ ({top}); the package must not")
        # layers
        if _in(imp.module, f"{PKG}.kernels"):
            if not (top in ("torch", "triton") or top in STDLIB or _in(imp.target, f"{PKG}.kernels")):
                problems.append(
                    f"{imp.where()}: kernels/ may not import {imp.target}: torch, triton and the standard library only"
                )
        if imp.module == f"{PKG}.reference" and not (top == "torch" or imp.target in ("typing", "__future__")):
            problems.append(f"{imp.where()}: reference.py may not import {imp.target}: torch (typing, __future__) only")
        if imp.module in library and any(_in(imp.target, u) for u in upper):
            problems.append(f"{imp.where()}: the scoring library may not import {imp.target}")
        if _in(imp.module, f"{PKG}.compat") and ours and not _in(imp.target, f"{PKG}.compat"):
            if imp.target not in COMPAT_MAY_USE or (imp.target == PKG and imp.name and imp.name not in public):
                problems.append(
                    f"{imp.where()}: compat/ may not import {imp.target}: the public API (colbert_fast, ops, "
                    "packed) only"
                )
        if _in(imp.module, f"{PKG}.retrieval") and ours and not _in(imp.target, f"{PKG}.retrieval"):
            if imp.target not in RETRIEVAL_MAY_USE:
                problems.append(
                    f"{imp.where()}: retrieval/ may not import {imp.target}; of the library only colbert_fast's "
                    "public names, colbert_fast.packed, colbert_fast.reference and colbert_fast.files"
                )
            elif imp.target == PKG and imp.name and imp.name not in public:
                problems.append(f"{imp.where()}: {imp.name} is not in colbert_fast.__all__")
        if _in(imp.module, f"{PKG}.benchmark") and any(_in(imp.target, u) for u in upper if u != f"{PKG}.benchmark"):
            problems.append(f"{imp.where()}: benchmark/ may not import {imp.target}")
        if imp.target == f"{PKG}.testing" and imp.module != f"{PKG}.testing":
            problems.append(f"{imp.where()}: testing.py is for tests/ and bench/, not the package")
    for comp in _cycles(edges):
        lines = [i.where() for i in imports if i.module in comp and i.target in comp and i.target != i.module]
        problems.append(f"import cycle among {comp}: " + "; ".join(lines))
    return problems


# ---- the package ---------------------------------------------------------------------------------


def test_the_package_keeps_its_layers():
    sources = package_sources()
    assert {f"{PKG}.ops", f"{PKG}.retrieval.search", f"{PKG}.cli", f"{PKG}.kernels.maxsim"} <= set(sources)
    problems = violations(sources)
    assert not problems, "\n".join(problems)


def test_every_import_is_seen_including_function_level_and_relative_ones():
    imports = read_imports(package_sources())
    by_module = {}
    for imp in imports:
        by_module.setdefault(imp.module, set()).add(imp.target)
    # module level, relative
    assert f"{PKG}.validation" in by_module[f"{PKG}.ops"]
    # inside a function, relative (the lazy extension load)
    assert f"{PKG}._C" in by_module[f"{PKG}.extension"]
    # inside a function, two levels up
    assert f"{PKG}.retrieval.build" in by_module[f"{PKG}.cli.arguments"]
    assert sum(len(t) for t in by_module.values()) > 200


# ---- the checker fails on violations ---------------------------------------------------------------


def _synthetic(**modules: str) -> dict[str, tuple[str, bool]]:
    """A tiny colbert_fast: the real package's __init__ (for __all__) plus the given modules."""
    base = {
        PKG: (package_sources()[PKG][0], True),
        f"{PKG}.ops": ("", False),
        f"{PKG}.packed": ("", False),
        f"{PKG}.reference": ("import torch\n", False),
        f"{PKG}.files": ("", False),
        f"{PKG}.backends": ("", True),
        f"{PKG}.kernels": ("", True),
        f"{PKG}.retrieval": ("", True),
        f"{PKG}.cli": ("", True),
        f"{PKG}.testing": ("", False),
    }
    for name, source in modules.items():
        dotted = f"{PKG}." + name.replace("__", ".")
        base[dotted] = (source, False)
    return base


def _only(problems: list[str], *fragments: str) -> None:
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0], problems[0]


def test_checker_rejects_a_kernel_importing_the_library():
    _only(violations(_synthetic(kernels__k="from ..ops import maxsim\n"), set()), "colbert_fast.kernels.k", "line 1")
    _only(violations(_synthetic(kernels__k="import numpy\n"), set()), "kernels/ may not import numpy")
    ok = "import os\nimport triton.language as tl\nfrom . import settings\n"
    assert violations(_synthetic(kernels__k=ok), set()) == []


def test_checker_rejects_a_reference_importing_anything_but_torch():
    _only(violations(_synthetic(reference="import numpy as np\n"), set()), "reference.py may not import numpy")
    assert violations(_synthetic(reference="import torch\nfrom typing import Any\n"), set()) == []


def test_checker_rejects_the_library_importing_an_upper_wing():
    src = "def f():\n    from .retrieval import search\n"  # inside a function: still seen
    _only(violations(_synthetic(ops=src, retrieval__search=""), set()), "colbert_fast.ops (line 2", "may not import")


def test_checker_rejects_retrieval_reaching_into_the_library():
    _only(
        violations(_synthetic(retrieval__r="from colbert_fast import backends\n"), set()),
        "retrieval/ may not import colbert_fast.backends",
    )
    _only(violations(_synthetic(retrieval__r="from colbert_fast import ops\n"), set()), "colbert_fast.ops")
    _only(
        violations(_synthetic(retrieval__r="from colbert_fast import selected\n"), set()), "not in colbert_fast.__all__"
    )
    ok = "import colbert_fast as cf\nfrom colbert_fast import PackedDocs, maxsim_packed\n"
    ok += "from colbert_fast.files import sha256\nfrom colbert_fast import reference\n"
    ok += "from colbert_fast.packed import write_store\nfrom . import tsv\n"
    assert violations(_synthetic(retrieval__r=ok), set()) == []


def test_checker_rejects_private_names_and_private_modules():
    _only(violations(_synthetic(ops="from .packed import _ST_DTYPES\n"), set()), "private name _ST_DTYPES")
    _only(violations(_synthetic(ops="from .backends import _fakes\n"), set()), "private")
    _only(violations(_synthetic(ops="from . import _C\n"), set()), "only colbert_fast.extension loads")
    assert violations(_synthetic(extension="def load():\n    from . import _C\n"), set()) == []


def test_checker_rejects_cycles_even_through_function_level_imports():
    a = "from . import b\n"
    b = "def later():\n    from . import a\n"
    _only(violations(_synthetic(a=a, b=b), set()), "import cycle", "colbert_fast.a", "colbert_fast.b")


def test_checker_rejects_imports_from_tests_and_bench_and_of_testing():
    _only(violations(_synthetic(cli__c="from helpers import normalized\n"), {"helpers"}), "tests/ or bench/")
    _only(violations(_synthetic(cli__c="from colbert_fast import testing\n"), set()), "testing.py is for tests/")
