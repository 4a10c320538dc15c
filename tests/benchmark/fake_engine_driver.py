"""A stand-in peer for tests/benchmark/test_engines.py: the engine_driver.py protocol (SPEC OUT)
with an exact brute-force MaxSim "engine", so the subprocess protocol, the recall computation and
the rows are tested without fast-plaid or xtr-warp-rs. Setting kwargs: shift=s drops the best s
docs of each ranking (a known recall: shift=1 finds 9 of the true top 10)."""

import sys
from pathlib import Path

import torch

from colbert_fast.benchmark import engine_driver


class Exact:
    def build(self, docs, index_dir, threads, **kwargs):
        Path(index_dir).mkdir(parents=True, exist_ok=True)
        torch.save(torch.cat(docs).half(), Path(index_dir) / "tokens.pt")
        torch.save(torch.tensor([d.shape[0] for d in docs]), Path(index_dir) / "lengths.pt")

    def open(self, index_dir, threads):
        tokens = torch.load(Path(index_dir) / "tokens.pt").float()
        return torch.split(tokens, torch.load(Path(index_dir) / "lengths.pt").tolist())

    def search(self, docs, queries, k, threads, shift=0):
        out = []
        for q in queries:
            scores = torch.tensor([float((q @ d.T).max(dim=1).values.sum()) for d in docs])
            out.append(torch.topk(scores, k + shift).indices.tolist()[shift:])
        return out


if __name__ == "__main__":
    sys.exit(engine_driver.main(engines={"fake": Exact}))
