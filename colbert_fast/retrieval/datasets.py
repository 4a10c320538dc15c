"""Test collections for the evaluation protocol: Cranfield (shipped in the package) and MS MARCO-format TSV files.

A Dataset is the collection (pids and texts in order), the queries (qids and texts) and graded
judgements qrels[qid][pid] = gain (> 0 relevant; unjudged = 0). The judgements' gains are what
nDCG uses, so every loader maps its file's grades onto "bigger is better".

Cranfield ships as package data in colbert_fast/retrieval/data/cranfield/ (its README.md says
where it comes from), so `colbert-fast experiment` runs from a wheel; $COLBERT_FAST_CRANFIELD or
an explicit directory reads another copy. Its conventions:
  - docs are `.I <id>` records; the text is the .W field (which repeats the title), or the title
    when .W is empty (a few records).
  - queries are numbered by their POSITION in cran.qry (1..225): cranqrel uses positions, not the
    `.I` ids, which skip numbers.
  - cranqrel grades run 1 (complete answer) .. 4 (minimum interest); -1 marks no interest. All of
    1-4 count as relevant; the nDCG gain is 5 - grade (1 -> 4, ..., 4 -> 1) and -1 gets 0.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from pathlib import Path

from . import tsv

__all__ = [
    "Dataset",
    "cranfield_gain",
    "default_cranfield_dir",
    "load_cranfield",
    "load_tsv_dataset",
    "parse_smart_records",
]

# A directory holding cran.all.1400, cran.qry and cranqrel, read instead of the package's copy.
CRANFIELD_ENV = "COLBERT_FAST_CRANFIELD"
PACKAGED_CRANFIELD = Path(__file__).resolve().parent / "data" / "cranfield"


@dataclasses.dataclass
class Dataset:
    name: str
    pids: list[str]
    texts: list[str]
    qids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]

    def __post_init__(self) -> None:
        if len(self.pids) != len(self.texts) or len(self.qids) != len(self.queries):
            raise ValueError("pids/texts and qids/queries must have the same lengths")
        if len(set(self.pids)) != len(self.pids):
            raise ValueError(f"{self.name}: duplicate pids in the collection")
        if len(set(self.qids)) != len(self.qids):
            raise ValueError(f"{self.name}: duplicate qids")

    def judged_qids(self) -> list[str]:
        """Queries with at least one relevant doc (the ones every metric averages over), in order."""
        return [q for q in self.qids if any(g > 0 for g in self.qrels.get(q, {}).values())]

    def subset(self, num_docs: int) -> Dataset:
        """The first num_docs docs, the queries with a relevant doc among them, and their qrels.

        Relevant docs outside the slice are dropped from the qrels (the slice is its own collection).
        """
        if num_docs < 1:
            raise ValueError(f"num_docs must be >= 1, got {num_docs}")
        pids = self.pids[:num_docs]
        keep = set(pids)
        qrels = {q: {p: g for p, g in rel.items() if p in keep} for q, rel in self.qrels.items()}
        qrels = {q: rel for q, rel in qrels.items() if any(g > 0 for g in rel.values())}
        pairs = [(q, t) for q, t in zip(self.qids, self.queries) if q in qrels]
        return Dataset(
            name=f"{self.name}[:{num_docs}]",
            pids=pids,
            texts=self.texts[:num_docs],
            qids=[q for q, _ in pairs],
            queries=[t for _, t in pairs],
            qrels=qrels,
        )

    def write_collection(self, path: str | os.PathLike) -> Path:
        """The collection as an MS MARCO TSV ('pid<TAB>text'), which the indexer reads."""
        return tsv.write_collection(path, self.pids, self.texts)


# ---- Cranfield -----------------------------------------------------------------------------------


def default_cranfield_dir() -> Path:
    """$COLBERT_FAST_CRANFIELD when set, else the copy shipped inside the package."""
    env = os.environ.get(CRANFIELD_ENV)
    return Path(env) if env else PACKAGED_CRANFIELD


def parse_smart_records(text: str) -> list[tuple[str, dict[str, str]]]:
    """SMART-format records: a line '.I <id>' starts one; '.X' lines start field X. -> [(id, {X: text})]."""
    records: list[tuple[str, dict[str, str]]] = []
    field = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith(".I"):
            rid = line[2:].strip()
            if not rid:
                raise ValueError(f"line {lineno}: '.I' without an id")
            records.append((rid, {}))
            field = None
        elif len(line) >= 2 and line[0] == "." and line[1].isalpha() and line[2:].strip() == "":
            if not records:
                raise ValueError(f"line {lineno}: field {line!r} before the first '.I'")
            field = line[1]
            records[-1][1].setdefault(field, "")
        elif field is not None:
            fields = records[-1][1]
            fields[field] = f"{fields[field]} {line.strip()}" if fields[field] else line.strip()
        elif line.strip():
            raise ValueError(f"line {lineno}: text outside a field: {line[:40]!r}")
    return records


def cranfield_gain(grade: int) -> int:
    """cranqrel's grade (1 best .. 4 least, -1 none) -> nDCG gain (4 .. 1, 0)."""
    return 5 - grade if 1 <= grade <= 4 else 0


def load_cranfield(directory: str | os.PathLike | None = None) -> Dataset:
    """The Cranfield 1400 collection from cran.all.1400, cran.qry and cranqrel (see the module doc)."""
    directory = Path(directory) if directory is not None else default_cranfield_dir()
    files = {name: directory / name for name in ("cran.all.1400", "cran.qry", "cranqrel")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"Cranfield files not found: {', '.join(missing)} (set {CRANFIELD_ENV} to the directory that holds them)"
        )
    pids, texts = [], []
    for rid, fields in parse_smart_records(files["cran.all.1400"].read_text(encoding="utf-8")):
        text = fields.get("W", "").strip() or fields.get("T", "").strip()
        pids.append(rid)
        texts.append(text)
    queries = [fields.get("W", "").strip() for _, fields in parse_smart_records(files["cran.qry"].read_text())]
    qids = [str(i) for i in range(1, len(queries) + 1)]  # cranqrel numbers queries by position
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    known = set(pids)
    for lineno, line in enumerate(files["cranqrel"].read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise ValueError(f"{files['cranqrel']}:{lineno}: expected 'query_position doc_id grade'")
        q, p, grade = parts[0], parts[1], int(parts[2])
        if p not in known:
            raise ValueError(f"{files['cranqrel']}:{lineno}: unknown doc id {p}")
        qrels[q][p] = max(cranfield_gain(grade), qrels[q].get(p, 0))
    return Dataset("cranfield", pids, texts, qids, queries, dict(qrels))


# ---- MS MARCO-format files -----------------------------------------------------------------------


def load_tsv_dataset(collection: str | os.PathLike, queries: str | os.PathLike, qrels: str | os.PathLike) -> Dataset:
    """collection TSV ('pid<TAB>text'), queries TSV ('qid<TAB>text') and qrels ('qid 0 pid grade').

    Grades are used as gains as they are (MS MARCO and TREC: bigger is better).
    """
    pids, texts = tsv.read_collection(collection)
    qids, qtexts = tsv.read_queries(queries)
    return Dataset(Path(collection).stem, pids, texts, qids, qtexts, tsv.load_qrels(qrels))
