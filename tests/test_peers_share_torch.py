"""The peers venv's link to the product venv's torch (tests/peers_share_torch.py, `make peers`)."""

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("peers_share_torch", Path(__file__).parent / "peers_share_torch.py")
share = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(share)


def _names(dists):
    return {d.metadata["Name"].lower().replace("_", "-") for d in dists}


def test_closure_holds_torch_and_what_it_requires_but_not_the_rest_of_the_venv():
    names = _names(share.closure("torch"))
    assert "torch" in names
    assert {"sympy", "filelock"} <= names  # torch's own requirements, found transitively: mpmath via sympy
    assert "mpmath" in names
    assert not names & {"transformers", "colbert-fast", "pytest", "kernels"}


def test_link_puts_code_and_metadata_side_by_side_and_can_run_twice(tmp_path):
    linked = share.link(tmp_path / "links")
    assert "torch" in linked and any(n.startswith("torch-") and n.endswith(".dist-info") for n in linked)
    assert (tmp_path / "links" / "torch" / "__init__.py").resolve() == Path(torch.__file__).resolve()
    assert not any(n.startswith("transformers") for n in linked)
    assert share.link(tmp_path / "links") == []  # a rerun (the stamp remade) finds every link there


def test_an_unknown_root_links_nothing(tmp_path):
    assert share.link(tmp_path / "links", root="no-such-distribution-here") == []
