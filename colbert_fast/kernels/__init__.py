"""Source-tree shim for colbert_fast.kernels (never installed).

The Triton kernels live in the top-level kernels/ directory and setup.py installs them as the
package colbert_fast.kernels (package_dir). An installed copy (normal or editable) uses that
mapping and never sees this file: setuptools takes colbert_fast.kernels from kernels/, and only
*.py files directly in colbert_fast/ belong to the colbert_fast package itself.

Running from a checkout with PYTHONPATH=<repo>, Python finds this directory instead. It loads
<repo>/kernels/__init__.py under the name colbert_fast.kernels, with kernels/ as the package's
search path, and puts that module in sys.modules in place of this shim, so
`import colbert_fast.kernels.maxsim` gives exactly the module an installed copy would.
"""

import importlib.util
import sys
from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[2] / "kernels"
if not (_SOURCE / "__init__.py").is_file():
    raise ImportError(f"colbert_fast.kernels: expected the Triton kernels at {_SOURCE} (source checkout)")

_spec = importlib.util.spec_from_file_location(
    __name__, _SOURCE / "__init__.py", submodule_search_locations=[str(_SOURCE)]
)
_module = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _module  # the import system returns this module, not the shim
_spec.loader.exec_module(_module)
