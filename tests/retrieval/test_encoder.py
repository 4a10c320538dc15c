"""The ColBERT encoder: markers, [MASK] augmentation, skiplist, checkpoint formats (tiny BERT, no downloads)."""

from __future__ import annotations

import json
import string

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from colbert_fast.retrieval.encoder import ColBERT, EncoderConfig
from colbert_fast.testing import tiny_encoder

QUERIES = ["the cats, run fast!", "dog", "", "blue " * 60]
DOCS = ["the cat, the dog. and fish!", "water", "red " * 300, "?!.,"]


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("tiny"))


def expected_vectors(enc: ColBERT, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Independent forward: backbone -> linear weight -> unit rows."""
    with torch.no_grad():
        hidden = enc.backbone(input_ids=ids, attention_mask=attention).last_hidden_state
        return F.normalize(hidden @ enc.linear.weight.T, dim=-1)


def punct_ids(enc: ColBERT) -> set[int]:
    return {enc.tokenizer.convert_tokens_to_ids(c) for c in string.punctuation}


# ---- tokenization --------------------------------------------------------------------------------


def test_query_markers_mask_padding_and_truncation(enc):
    tok = enc.tokenizer
    ids, attention, q_mask = enc.tokenize_queries(QUERIES)
    assert ids.shape == (4, 32) and attention.shape == (4, 32)
    assert (ids[:, 0] == tok.cls_token_id).all()
    assert (ids[:, 1] == tok.convert_tokens_to_ids("[unused0]")).all()
    assert q_mask.all(), "query augmentation: every position, [MASK] included, is scored"
    for i, q in enumerate(QUERIES):
        body = tok.encode(q, add_special_tokens=False)[:29]  # 32 - [CLS], [Q], [SEP]
        n = len(body) + 3
        assert ids[i, 2 : n - 1].tolist() == body
        assert ids[i, n - 1] == tok.sep_token_id
        assert (ids[i, n:] == tok.mask_token_id).all()
        # attend_to_mask_tokens=False: the real tokens do not attend to the [MASK] padding
        assert attention[i, :n].all() and not attention[i, n:].any()
    assert (ids[3] != tok.mask_token_id).all(), "a long query is truncated to exactly 32 real tokens"


def test_attend_to_mask_tokens(tmp_path):
    off = tiny_encoder(tmp_path / "a", attend_to_mask_tokens=False)
    on = tiny_encoder(tmp_path / "b", attend_to_mask_tokens=True)
    _, attention, _ = on.tokenize_queries(["dog"])
    assert attention.all()
    # Without attention to the padding, a real token's vector cannot depend on how much padding there is.
    short = tiny_encoder(tmp_path / "c", attend_to_mask_tokens=False, query_maxlen=8)
    q_off, _ = off.encode_queries(["the cat"])
    q_short, _ = short.encode_queries(["the cat"])
    torch.testing.assert_close(q_off[0, :5], q_short[0, :5], atol=1e-5, rtol=0)
    q_on, _ = on.encode_queries(["the cat"])
    assert (q_on[0, :5] - q_off[0, :5]).abs().max() > 1e-3, "attending to [MASK] must change the real tokens"


def test_query_vectors_match_an_independent_forward(enc):
    Q, q_mask = enc.encode_queries(QUERIES)
    ids, attention, _ = enc.tokenize_queries(QUERIES)
    torch.testing.assert_close(Q, expected_vectors(enc, ids, attention), atol=1e-5, rtol=1e-5)
    assert Q.dtype == torch.float32 and q_mask.dtype == torch.bool
    torch.testing.assert_close(Q.norm(dim=-1), torch.ones(Q.shape[:2]), atol=1e-5, rtol=0)


def test_doc_marker_skiplist_and_truncation(enc):
    tok = enc.tokenizer
    ids, attention, keep = enc.tokenize_docs(DOCS)
    assert (ids[:, 1] == tok.convert_tokens_to_ids("[unused1]")).all()
    assert ids.shape[1] == 180, "the 300-word doc is truncated to doc_maxlen"
    assert set(enc.skip_ids.tolist()) == punct_ids(enc)
    for i in range(len(DOCS)):
        real = attention[i].bool()
        assert (keep[i] == (real & ~torch.isin(ids[i], torch.tensor(sorted(punct_ids(enc)))))).all()
    assert keep[3].sum() == 3, "a doc of punctuation keeps [CLS], [D], [SEP] only"
    D = enc.encode_docs(DOCS)
    full = expected_vectors(enc, ids, attention)  # punctuation is encoded (context), then dropped
    for i, d in enumerate(D):
        torch.testing.assert_close(d, full[i][keep[i]], atol=1e-5, rtol=1e-5)


def test_mask_punctuation_off_keeps_everything(tmp_path):
    enc = tiny_encoder(tmp_path, mask_punctuation=False)
    _, attention, keep = enc.tokenize_docs(DOCS[:1])
    assert (keep == attention.bool()).all()
    assert enc.encode_docs(DOCS[:1])[0].shape[0] == int(attention.sum())


def test_no_query_expansion_masks_padding(tmp_path):
    enc = tiny_encoder(tmp_path, query_expansion=False)
    ids, attention, q_mask = enc.tokenize_queries(["dog", "the cat runs"])  # [CLS] [Q] the cat run ##s [SEP]
    assert ids.shape[1] == 7 and (q_mask == attention.bool()).all()
    assert not (ids == enc.tokenizer.mask_token_id).any()


# ---- checkpoints -----------------------------------------------------------------------------


def assert_same_model(a: ColBERT, b: ColBERT) -> None:
    assert a.config == b.config
    Qa, ma = a.encode_queries(QUERIES)
    Qb, mb = b.encode_queries(QUERIES)
    torch.testing.assert_close(Qa, Qb, atol=1e-6, rtol=0)
    assert torch.equal(ma, mb)
    for da, db in zip(a.encode_docs(DOCS), b.encode_docs(DOCS)):
        torch.testing.assert_close(da, db, atol=1e-6, rtol=0)


def test_save_load_round_trip(enc, tmp_path):
    enc.save(tmp_path / "m")
    assert_same_model(enc, ColBERT.load(tmp_path / "m"))
    enc.save(tmp_path / "m")  # overwriting an existing model directory
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["m"], f"no temp directories left behind: {names}"
    meta = json.loads((tmp_path / "m" / "artifact.metadata").read_text())
    assert meta["query_token_id"] == "[unused0]" and meta["doc_maxlen"] == 180 and meta["dim"] == 128


def test_overrides_on_load(enc, tmp_path):
    enc.save(tmp_path / "m")
    loaded = ColBERT.load(tmp_path / "m", doc_maxlen=20)
    assert loaded.config.doc_maxlen == 20
    assert loaded.tokenize_docs(DOCS)[0].shape[1] == 20


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
@pytest.mark.parametrize("nested", [False, True])
def test_load_colbertv2_layout(enc, tmp_path, weights, nested):
    """A directory laid out like colbert-ir/colbertv2.0: HF_ColBERT config, bert.* + linear.weight,
    artifact.metadata."""
    from safetensors.torch import save_file

    d = tmp_path / "colbertv2"
    d.mkdir()
    cfg = enc.backbone.config.to_dict()
    cfg["architectures"] = ["HF_ColBERT"]
    (d / "config.json").write_text(json.dumps(cfg))
    state = {f"bert.{k}": v.clone() for k, v in enc.backbone.state_dict().items()}
    state["linear.weight"] = enc.linear.weight.detach().clone()
    state["cls.predictions.bias"] = torch.zeros(3)  # MLM head leftovers are ignored
    if weights == "bin":
        torch.save(state, d / "pytorch_model.bin")
    else:
        save_file(state, str(d / "model.safetensors"))
    meta = {
        "dim": 128,
        "query_maxlen": 32,
        "doc_maxlen": 180,
        "similarity": "cosine",
        "mask_punctuation": True,
        "attend_to_mask_tokens": False,
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "nbits": 2,
    }
    (d / "artifact.metadata").write_text(json.dumps({"config": meta} if nested else meta))
    enc.tokenizer.save_pretrained(str(d))
    assert_same_model(enc, ColBERT.load(d))


def test_load_pylate_layout(enc, tmp_path):
    """A PyLate (sentence-transformers) ColBERT: modules.json, Transformer at the root, 1_Dense,
    [Q]/[D] added tokens."""
    import copy

    from safetensors.torch import save_file

    d = tmp_path / "pylate"
    tok = copy.deepcopy(enc.tokenizer)
    tok.add_tokens(["[Q] ", "[D] "])
    backbone = copy.deepcopy(enc.backbone)
    backbone.resize_token_embeddings(len(tok))
    backbone.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    (d / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
            ]
        )
    )
    (d / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "query_prefix": "[Q] ",
                "document_prefix": "[D] ",
                "query_length": 24,
                "document_length": 100,
                "attend_to_expansion_tokens": False,
                "skiplist_words": list(string.punctuation),
                "do_query_expansion": True,
            }
        )
    )
    (d / "1_Dense").mkdir()
    (d / "1_Dense" / "config.json").write_text(
        json.dumps(
            {
                "in_features": 32,
                "out_features": 128,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
        )
    )
    save_file({"linear.weight": enc.linear.weight.detach().clone()}, str(d / "1_Dense" / "model.safetensors"))

    loaded = ColBERT.load(d)
    c = loaded.config
    assert (c.query_maxlen, c.doc_maxlen, c.query_marker, c.doc_marker) == (24, 100, "[Q] ", "[D] ")
    q_id = loaded.tokenizer.convert_tokens_to_ids("[Q] ")
    assert q_id >= len(enc.tokenizer) and loaded.query_marker_id == q_id
    ids, attention, _ = loaded.tokenize_queries(["the cat"])
    assert ids.shape == (1, 24) and ids[0, 1] == q_id
    with torch.no_grad():
        hidden = backbone(input_ids=ids, attention_mask=attention).last_hidden_state
    expected = F.normalize(hidden @ enc.linear.weight.T, dim=-1)
    torch.testing.assert_close(loaded.encode_queries(["the cat"])[0], expected, atol=1e-5, rtol=1e-5)
    # The same model saved in our format loads back identically.
    loaded.save(tmp_path / "ours")
    assert_same_model(loaded, ColBERT.load(tmp_path / "ours"))


# ---- bad input -------------------------------------------------------------------------------


def test_bad_inputs(enc, tmp_path):
    with pytest.raises(TypeError, match="single str"):
        enc.encode_queries("the cat")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        enc.encode_docs(["cat", 3])
    with pytest.raises(ValueError, match="at least one"):
        enc.encode_queries([])
    assert enc.encode_docs([]) == []
    with pytest.raises(ValueError, match="similarity"):
        EncoderConfig(similarity="dot")
    with pytest.raises(ValueError, match="query_maxlen"):
        EncoderConfig(query_maxlen=0)
    with pytest.raises(ValueError, match="not in the tokenizer"):
        tiny_encoder(tmp_path / "x", query_marker="[NOPE]")
    with pytest.raises(ValueError, match="bias"):
        ColBERT(enc.backbone, enc.tokenizer, EncoderConfig(), torch.nn.Linear(32, 128, bias=True))
    with pytest.raises(ValueError, match="expected 32->64"):
        ColBERT(enc.backbone, enc.tokenizer, EncoderConfig(dim=64), torch.nn.Linear(32, 128, bias=False))
    with pytest.raises(FileNotFoundError):
        ColBERT.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither"):
        ColBERT.load(tmp_path / "empty")


def test_bad_checkpoints(enc, tmp_path):
    from safetensors.torch import load_file, save_file

    enc.save(tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    no_linear = {k: v for k, v in weights.items() if k != "linear.weight"}
    save_file(no_linear, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match="linear.weight"):
        ColBERT.load(tmp_path / "m")
    broken = dict(weights)
    broken.pop("bert.encoder.layer.1.output.dense.weight")
    save_file(broken, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        ColBERT.load(tmp_path / "m")
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cannot read"):
        ColBERT.load(tmp_path / "m")
