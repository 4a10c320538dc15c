"""Give the peers venv (`make peers`) the product venv's torch without a second copy.

Run with the product venv's python: ``python tests/peers_share_torch.py LINK_DIR``. It links
torch and every distribution torch requires (triton, the CUDA libraries, sympy, ...; over 5 GB
with a CUDA wheel) into LINK_DIR, code and metadata both, and prints LINK_DIR so the Makefile can
name it in a .pth file of the peers venv. pip there then finds torch installed and leaves it, and
the peers import the very files the product's tests ran with.

Only torch's closure is linked, not the whole product venv: packages the product has and the
peers must not see (a newer transformers, the `kernels` hub package transformers 5.3 picks up and
then fails on) stay out. Whatever the peers pin differently, pip installs in the peers venv itself,
which comes first on sys.path.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement


def _requirements(dist: metadata.Distribution, extras: set[str]) -> list[Requirement]:
    """What `dist` needs on this platform, with the given extras."""
    needed = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            needed.append(req)
    return needed


def closure(root: str) -> list[metadata.Distribution]:
    """`root` and every installed distribution it requires, transitively."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, set[str]]] = [(root, set())]
    while todo:
        name, extras = todo.pop()
        key = name.lower().replace("_", "-")
        if (key, frozenset(extras)) in seen:
            continue
        seen.add((key, frozenset(extras)))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this platform does not install
        found[key] = dist
        todo.extend((req.name, set(req.extras)) for req in _requirements(dist, extras))
    return list(found.values())


def top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The names directly under site-packages that `dist` installed (code and .dist-info)."""
    entries = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first not in ("..", "__pycache__") and not first.endswith(".pth"):
            entries.add(first)
    return entries


def link(link_dir: Path, root: str = "torch") -> list[str]:
    """Symlink `root`'s closure from this interpreter's site-packages into `link_dir`."""
    link_dir.mkdir(parents=True, exist_ok=True)
    linked = []
    for dist in closure(root):
        site = Path(dist.locate_file(""))
        for name in sorted(top_level_entries(dist)):
            target, here = site / name, link_dir / name
            if target.exists() and not (here.is_symlink() or here.exists()):
                here.symlink_to(target)
                linked.append(name)
    return linked


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} LINK_DIR")
    directory = Path(sys.argv[1]).resolve()
    names = link(directory)
    if not any(n.startswith("torch-") and n.endswith(".dist-info") for n in names):
        sys.exit(f"torch's metadata was not linked into {directory}: is torch installed here?")
    print(directory)
