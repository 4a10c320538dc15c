"""Where PyLate / colbert-ai are installed: our encodings equal theirs for the same checkpoint.

Neither is a dependency: `make test-peers` runs this file in the peers' own venv (pylate 1.6.0,
sentence-transformers 5.3.0, colbert-ai 0.2.22, transformers 5.3.0), CI included. colbert-ai is
checked on tokenization, attention masks and skiplist: its HF_ColBERT model class does not load
under transformers 5.
"""

from __future__ import annotations

import string

import pytest
import torch
from helpers import import_peer

from colbert_fast.testing import tiny_encoder

pytest.importorskip("transformers")

from colbert_fast.retrieval.encoder import ColBERT  # noqa: E402  (after the importorskip)

pytestmark = pytest.mark.peers

QUERIES = ["the cats, run fast!", "dog", "blue " * 60, ""]
DOCS = ["the cat, the dog. and fish!", "water", "red " * 300, "?!"]


def assert_same_encodings(ours: ColBERT, q_theirs, d_theirs) -> None:
    Q, _ = ours.encode_queries(QUERIES)
    for i, q in enumerate(q_theirs):
        torch.testing.assert_close(torch.as_tensor(q).float(), Q[i], atol=1e-5, rtol=0)
    for d_ours, d in zip(ours.encode_docs(DOCS), d_theirs):
        torch.testing.assert_close(torch.as_tensor(d).float(), d_ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attend", [False, True])
def test_pylate_reads_what_we_save_and_we_read_what_it_saves(tmp_path, attend):
    models = import_peer("pylate.models", "make peers")
    enc = tiny_encoder(tmp_path / "tiny", attend_to_mask_tokens=attend)
    enc.save(tmp_path / "ours")
    pl = models.ColBERT(model_name_or_path=str(tmp_path / "ours"), device="cpu")
    assert pl.attend_to_expansion_tokens == attend
    q = pl.encode(QUERIES, is_query=True, convert_to_numpy=False)
    d = pl.encode(DOCS, is_query=False, convert_to_numpy=False)
    assert_same_encodings(enc, q, d)
    pl.save(str(tmp_path / "pylate"))
    assert_same_encodings(ColBERT.load(tmp_path / "pylate"), q, d)


def test_pylate_model_with_added_marker_tokens(tmp_path):
    """A PyLate model started from a plain BERT: PyLate adds '[Q] ' and '[D] ' tokens and a new Dense layer."""
    models = import_peer("pylate.models", "make peers")
    enc = tiny_encoder(tmp_path / "tiny")
    enc.backbone.save_pretrained(str(tmp_path / "bert"))
    enc.tokenizer.save_pretrained(str(tmp_path / "bert"))
    pl = models.ColBERT(model_name_or_path=str(tmp_path / "bert"), device="cpu")
    pl.save(str(tmp_path / "pylate"))
    ours = ColBERT.load(tmp_path / "pylate")
    assert ours.config.query_marker == pl.query_prefix and ours.query_marker_id == pl.query_prefix_id
    q = pl.encode(QUERIES, is_query=True, convert_to_numpy=False)
    d = pl.encode(DOCS, is_query=False, convert_to_numpy=False)
    assert_same_encodings(ours, q, d)


@pytest.mark.parametrize("attend", [False, True])
def test_colbert_ai_tokenization(tmp_path, attend):
    tokenization = import_peer("colbert.modeling.tokenization", "make peers")
    infra = import_peer("colbert.infra", "make peers")
    enc = tiny_encoder(tmp_path / "tiny", attend_to_mask_tokens=attend)
    enc.save(tmp_path / "ours")
    cc = infra.ColBERTConfig
    config = cc.from_existing(cc.load_from_checkpoint(str(tmp_path / "ours")), cc(checkpoint=str(tmp_path / "ours")))
    assert (config.doc_maxlen, config.query_maxlen, config.attend_to_mask_tokens) == (180, 32, attend)
    q_ids, q_mask = tokenization.QueryTokenizer(config).tensorize(QUERIES)
    doc_tok = tokenization.DocTokenizer(config)
    d_ids, d_mask = doc_tok.tensorize(DOCS)
    ids, attention, _ = enc.tokenize_queries(QUERIES)
    assert torch.equal(q_ids, ids) and torch.equal(q_mask.long(), attention)
    ids, attention, keep = enc.tokenize_docs(DOCS)
    assert torch.equal(d_ids, ids) and torch.equal(d_mask.long(), attention)
    # ColBERT's skiplist: each punctuation character and its first token id
    raw = doc_tok.tok
    skip = {w for s in string.punctuation for w in (s, raw.encode(s, add_special_tokens=False)[0])}
    theirs = torch.tensor([[x not in skip and x != raw.pad_token_id for x in row] for row in d_ids.tolist()])
    assert torch.equal(theirs, keep)
