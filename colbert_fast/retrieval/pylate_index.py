"""A drop-in index for PyLate users: PyLate's index interface on colbert_fast's live index.

    from colbert_fast.retrieval.pylate_index import PyLateIndex
    from pylate import retrieve

    index = PyLateIndex(index_folder="pylate-index", index_name="index", override=True)
    index.add_documents(documents_ids=ids, documents_embeddings=model.encode(docs, is_query=False))
    retriever = retrieve.ColBERT(index=index)
    results = retriever.retrieve(queries_embeddings=model.encode(queries, is_query=True), k=10)

PyLateIndex has the interface of PyLate 1.6.0's indexes (pylate.indexes.PLAID, Voyager):
index_folder / index_name / override, add_documents, remove_documents, update_documents,
__call__(queries_embeddings, k, subset) and get_documents_embeddings. Like PLAID it is an
end-to-end index (is_end_to_end_index = True): pylate.retrieve.ColBERT hands the queries to it and
returns its answer as is, a list (per query) of lists of {"id": ..., "score": ...}, best first.
PyLate need not be installed.

Behind it is colbert_fast.retrieval.live.LiveIndex (a residual store, 2 bits per dimension by default,
no faiss IVF): candidates come from the store's own centroids, and with exact=True (the default)
each query's search widens until its top k is certified, so the answer is the exact MaxSim top k
over the stored (decoded) vectors, the one exhaustive search gives. exact=False is the approximate
centroid engine (nprobe / ncandidates set its budget).

The first add_documents creates the index and trains the residual codebook (centroids and
buckets) on that first batch; later adds encode with the same codebook, never retrained (so make
the first batch representative). Each add, remove or update is one crash-safe generation of the
live index (see colbert_fast.retrieval.live); deleted docs are never returned.

On disk: index_folder/index_name/ holds `live/` (the LiveIndex directory: open it with
colbert_fast.retrieval.live.LiveIndex too) and `pylate_index.json` (whether the ids were ints, so
they come back as ints, as PyLate's own indexes return them; the live index keeps strings).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["PyLateIndex"]

LIVE_DIR = "live"
SIDECAR = "pylate_index.json"


def _as_ids(documents_ids) -> list:
    """PyLate accepts one id as a bare string; ranges and other sequences become lists."""
    if isinstance(documents_ids, (str, bytes)):
        return [documents_ids]
    if isinstance(documents_ids, (np.ndarray, torch.Tensor)):
        return documents_ids.tolist()
    if not isinstance(documents_ids, Sequence) and not hasattr(documents_ids, "__iter__"):
        raise TypeError(f"documents_ids must be a list of ids, got {type(documents_ids).__name__}")
    return list(documents_ids)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _key(x) -> str:
    """The id as the live index keeps it (a string)."""
    return str(int(x)) if _is_int(x) else str(x)


def _as_docs(documents_embeddings) -> list:
    """PyLate's model.encode output (a list of [L_i, dim] arrays/tensors), or a [N, L, dim]
    array/tensor, as a list of per-doc tensors/arrays (LiveIndex checks shapes and dims)."""
    if isinstance(documents_embeddings, torch.Tensor):
        documents_embeddings = documents_embeddings.detach().cpu()
    if isinstance(documents_embeddings, (np.ndarray, torch.Tensor)):
        if documents_embeddings.ndim == 2:  # one doc, as PyLate's reshape_embeddings reads it
            return [documents_embeddings]
        if documents_embeddings.ndim != 3:
            raise ValueError(
                f"documents_embeddings must be a list of [L, dim] arrays or a [N, L, dim] array, "
                f"got shape {tuple(documents_embeddings.shape)}"
            )
        return list(documents_embeddings)
    return [e.detach().cpu() if isinstance(e, torch.Tensor) else e for e in documents_embeddings]


def _as_queries(queries_embeddings):
    """A [Lq, dim] array/tensor is one query (as in PyLate); lists and [B, Lq, dim] pass through."""
    if isinstance(queries_embeddings, torch.Tensor):
        queries_embeddings = queries_embeddings.detach()
    if isinstance(queries_embeddings, (np.ndarray, torch.Tensor)):
        if queries_embeddings.ndim == 2:
            return [queries_embeddings]
        return queries_embeddings
    return [q.detach() if isinstance(q, torch.Tensor) else q for q in queries_embeddings]


def _num_queries(queries) -> int:
    return int(queries.shape[0]) if isinstance(queries, (np.ndarray, torch.Tensor)) else len(queries)


class PyLateIndex:
    """PyLate's index interface on a colbert_fast LiveIndex (see the module doc).

    Args:
        index_folder, index_name: the index lives in index_folder/index_name (PyLate's layout).
        override: remove whatever is in index_folder/index_name first (as PyLate's indexes do);
            otherwise an index already there is opened (its docs are searchable at once).
        exact: True (default): the certified-exact top k (centroid search widened until
            certified, equal to exhaustive MaxSim over the stored vectors). False: the
            approximate centroid engine, its budget set by nprobe and ncandidates.
        nprobe: centroids probed per query token (the starting budget when exact).
        ncandidates: docs scored exactly per query (at least k; the starting budget when exact).
        store_nbits: bits per dimension of the residual store (1, 2 or 4), for the index the
            first add creates. config: a full colbert_fast.retrieval.build.IndexConfig instead (its
            ivf is forced off: a live index has none).
        device: where search runs (default: cuda when available, else cpu).
        backend: colbert_fast scoring backend ("auto").
        batch_size: queries scored together in __call__.
        show_progress: a progress bar while adds are encoded.
    """

    is_end_to_end_index = True  # pylate.retrieve.ColBERT returns our __call__'s answer as is

    def __init__(
        self,
        index_folder: str = "indexes",
        index_name: str = "colbert",
        override: bool = False,
        *,
        exact: bool = True,
        nprobe: int | None = None,
        ncandidates: int | None = None,
        store_nbits: int = 2,
        config=None,
        device: str | torch.device | None = None,
        backend: str = "auto",
        batch_size: int = 32,
        show_progress: bool = False,
    ) -> None:
        from .build import IndexConfig
        from .index import MANIFEST

        if config is None:
            config = IndexConfig(ivf=False, store_nbits=store_nbits)
        self.config = config
        self.exact = bool(exact)
        self.nprobe, self.ncandidates = nprobe, ncandidates
        self.device, self.backend, self.batch_size = device, backend, batch_size
        self.show_progress = show_progress
        self.index_folder, self.index_name = str(index_folder), str(index_name)
        self.index_path = Path(index_folder) / index_name
        if override and self.index_path.exists():
            if self.index_path.is_dir() and not self.index_path.is_symlink():
                shutil.rmtree(self.index_path)
            else:
                raise ValueError(f"{self.index_path} is not a directory: cannot override it")
        self.index_path.mkdir(parents=True, exist_ok=True)
        self.live_path = self.index_path / LIVE_DIR
        self._int_ids = self._read_sidecar()
        self._live = None
        if (self.live_path / MANIFEST).exists():
            self._live = self._open()

    # ---- state ------------------------------------------------------------------------------

    def _open(self):
        from .live import LiveIndex

        return LiveIndex(self.live_path, device=self.device, backend=self.backend)

    def _read_sidecar(self) -> bool:
        path = self.index_path / SIDECAR
        if not path.exists():
            return False
        return json.loads(path.read_text()).get("ids") == "int"

    def _write_sidecar(self, int_ids: bool) -> None:
        path = self.index_path / SIDECAR
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"format": 1, "ids": "int" if int_ids else "str"}))
        os.replace(tmp, path)
        self._int_ids = int_ids

    def _sync(self) -> None:
        """See what another writer (another PyLateIndex on this folder) committed since: PyLate's
        indexes re-read their files on every call too. One small manifest read when nothing changed."""
        from .index import MANIFEST

        if self._live is None:
            if (self.live_path / MANIFEST).exists():
                self._live = self._open()
                self._int_ids = self._read_sidecar()
        elif self._live.refresh():
            self._int_ids = self._read_sidecar()

    @property
    def live(self):
        """The LiveIndex behind this one (None before the first add_documents)."""
        return self._live

    def _pids(self) -> set[str]:
        return set(self._live.searcher.index.pids) if self._live is not None else set()

    def _out_id(self, pid: str):
        # ints come back as ints when every id added was one (a non-canonical string stays a string)
        if self._int_ids and pid.lstrip("-").isdigit() and str(int(pid)) == pid:
            return int(pid)
        return pid

    def __len__(self) -> int:
        return 0 if self._live is None else len(self._live)

    def __repr__(self) -> str:
        return f"PyLateIndex({str(self.index_path)!r}, docs={len(self)}, exact={self.exact})"

    # ---- changes ----------------------------------------------------------------------------

    def add_documents(self, documents_ids, documents_embeddings, batch_size: int = 2000, **kwargs) -> PyLateIndex:
        """Add documents (ids, PyLate's list of [L_i, dim] embeddings). The first add creates the
        index and trains its codebook on these docs; later ones reuse that codebook. One call is
        one generation (batch_size is accepted for PyLate's signature: encoding runs in steps of
        its own). An id already in the index raises ValueError (use update_documents)."""
        ids = _as_ids(documents_ids)
        docs = _as_docs(documents_embeddings)
        int_ids = bool(ids) and all(_is_int(i) for i in ids)
        keys = [_key(i) for i in ids]
        if self._live is None:
            from .live import LiveIndex

            if not ids:
                raise ValueError("add_documents needs at least one document (got no ids)")
            # the id type first: a failure after it leaves ints read back as strings, never the reverse
            self._write_sidecar(int_ids)
            self._live = LiveIndex.create(self.live_path, docs, keys, config=self.config, device=self.device,
                                          backend=self.backend)  # fmt: skip
            return self
        if self._int_ids and not int_ids:
            self._write_sidecar(False)
        self._live.add(keys, docs, progress=self.show_progress)
        return self

    def remove_documents(self, documents_ids, missing: str = "error") -> PyLateIndex:
        """Remove documents by id; they are never returned again. missing: "error" (KeyError
        naming the unknown ids, nothing removed) or "ignore" (as PyLate's PLAID does)."""
        ids = [_key(i) for i in _as_ids(documents_ids)]
        if self._live is None:
            if ids and missing == "error":
                raise KeyError(f"the index is empty: {len(ids)} ids to remove are not in it: {ids[:5]}")
            return self
        self._live.delete(ids, missing=missing)
        return self

    def update_documents(self, documents_ids, documents_embeddings) -> PyLateIndex:
        """Replace the embeddings of these ids (PLAID's update_documents): ids in the index are
        updated in one generation, ids not in it are added."""
        ids = _as_ids(documents_ids)
        docs = _as_docs(documents_embeddings)
        if len(ids) != len(docs):
            raise ValueError(f"got {len(ids)} documents_ids for {len(docs)} documents_embeddings")
        present = self._pids()
        keys = [_key(i) for i in ids]
        old = [n for n, p in enumerate(keys) if p in present]
        new = [n for n, p in enumerate(keys) if p not in present]
        if old:
            self._live.update([keys[n] for n in old], [docs[n] for n in old], progress=self.show_progress)
        if new:
            self.add_documents([ids[n] for n in new], [docs[n] for n in new])
        return self

    # ---- search -----------------------------------------------------------------------------

    def __call__(self, queries_embeddings, k: int = 10, subset=None) -> list[list[dict]]:
        """Top k per query as PyLate returns it: [[{"id": ..., "score": float}, ...], ...], best first.

        queries_embeddings: a list of [Lq, dim] arrays/tensors (PyLate's model.encode), a
        [B, Lq, dim] array/tensor, or one [Lq, dim] query. subset: restrict the search to these
        ids (one list for every query, or one list per query); ids not in the index are ignored,
        as in PyLate's PLAID.
        """
        self._sync()
        if self._live is None or len(self._live) == 0:
            raise ValueError("The index is empty. Please add documents before querying.")
        queries = _as_queries(queries_embeddings)
        n = _num_queries(queries)
        if subset is None:
            rankings = self._search(queries, k, None)
        elif len(subset) > 0 and isinstance(subset[0], (list, tuple, set, np.ndarray)):
            if len(subset) != n:
                raise ValueError(f"subset has {len(subset)} lists for {n} queries")
            rankings = [self._search(queries[i : i + 1], k, subset[i])[0] for i in range(n)]
        else:
            rankings = self._search(queries, k, subset)
        return [[{"id": self._out_id(pid), "score": float(score)} for pid, score in r] for r in rankings]

    def _search(self, queries, k: int, subset):
        allowed = None
        if subset is not None:
            present = self._pids()
            allowed = [p for p in map(_key, subset) if p in present]
        return self._live.search(
            queries,
            k,
            mode="centroid",
            exact=self.exact,
            nprobe=self.nprobe,
            ncandidates=self.ncandidates,
            batch_size=self.batch_size,
            allowed=allowed,
        )

    def get_documents_embeddings(self, documents_ids) -> list[list[np.ndarray]]:
        """The stored (decoded) token vectors of these docs, fp32 [L, dim] arrays, in the nesting of
        documents_ids (PyLate passes a list per query). Unknown ids raise KeyError."""
        if self._live is None:
            raise ValueError("The index is empty. Please add documents before querying.")
        index = self._live.searcher.index
        row = {p: n for n, p in enumerate(index.pids)}
        docs = index.docs

        def one(i):
            if _key(i) not in row:
                raise KeyError(f"document id {i!r} is not in the index")
            return docs.doc(row[_key(i)]).float().cpu().numpy()

        return [[one(i) for i in group] for group in documents_ids]
