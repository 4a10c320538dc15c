"""How much faster colbert-ai's and PyLate's own scoring entry points run once patched
(colbert_fast.compat), next to the bare kernel on the same work: the speed criterion of the
drop-in issue, 1 query x 1,000 docs on the CPU.

    python bench/compat_speed.py [--threads 1 2] [--docs 1000] [--reps 30] [--out out/compat_speed]

For each entry point, three rows on the same inputs, timed interleaved (one call of each per round,
so a change in machine load hits all three alike):
    unpatched   the library's own function
    patched     the same function object the library exposes, after compat.patch_colbert() /
                patch_pylate() (what a user's existing code calls after the one-line patch)
    kernel      colbert_fast's public op on the same data (the bound the patch can reach)
The patched scores are checked against the unpatched ones before timing. Inputs are prepared once,
outside the timed calls: random unit vectors, dim 128, Lq 32, doc lengths uniform in [20, 180]
(the R1 shape of docs/perf.md). Writes a JSON and a markdown table; needs colbert-ai and PyLate (make peers).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import colbert_fast as cf
from colbert_fast import compat


def _inputs(n_docs: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(20, 181, (n_docs,), generator=g)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    Q = unit(1, 32, 128)
    packed = unit(int(lengths.sum()), 128)
    docs = cf.PackedDocs(packed, lengths)
    padded, mask = cf.gather(docs, torch.arange(n_docs))
    return Q, docs, padded, mask, lengths


def _entry_points(Q, docs, padded, mask, lengths):
    """(name, library call taking the function, the function's module and name, kernel call)."""
    from colbert.infra.config import ColBERTConfig
    from colbert.modeling.colbert import ColBERT

    config = ColBERTConfig()  # no GPU here: colbert-ai's CPU paths
    ColBERT.try_load_torch_extensions(use_gpu=False)  # its packed CPU kernel, JIT-built once
    pids = torch.arange(docs.num_docs)[None]
    return [
        (
            "colbert-ai colbert_score_packed (CPU: maxima clamped at 0)",
            ("colbert.modeling.colbert", "colbert_score_packed"),
            lambda f: f(Q, docs.embeddings, lengths, config=config),
            lambda: cf.maxsim_packed(Q, docs, pids, floor=0.0),
        ),
        (
            "colbert-ai colbert_score (padded + mask, -9999 sentinel)",
            ("colbert.modeling.colbert", "colbert_score"),
            lambda f: f(Q, padded, mask.unsqueeze(-1), config=config),
            lambda: cf.maxsim(Q, padded, d_lengths=lengths),
        ),
        (
            "PyLate colbert_scores with documents_mask",
            ("pylate.scores", "colbert_scores"),
            lambda f: f(Q, padded, documents_mask=mask),
            lambda: cf.maxsim(Q, padded, d_lengths=lengths),
        ),
        (
            "PyLate colbert_scores, no mask (as pylate.rank)",
            ("pylate.scores", "colbert_scores"),
            lambda f: f(Q, padded),
            lambda: cf.maxsim(Q, padded),
        ),
    ]


def _function(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def run(threads: int, n_docs: int, reps: int, seed: int) -> list[dict]:
    torch.set_num_threads(threads)
    Q, docs, padded, mask, lengths = _inputs(n_docs, seed)
    rows = []
    for title, (module, name), call, kernel in _entry_points(Q, docs, padded, mask, lengths):
        original = _function(module, name)
        with compat.patched():
            patched = _function(module, name)
        assert patched is not original, f"{module}.{name} was not patched"
        want, got = call(original).float(), call(patched).float()
        torch.testing.assert_close(got, want, atol=1e-3 * Q.shape[1], rtol=1e-4)
        variants = {"unpatched": lambda c=call, f=original: c(f), "patched": lambda c=call, f=patched: c(f)}
        variants["kernel"] = kernel
        for fn in variants.values():  # warm-up
            fn()
        samples = {k: [] for k in variants}
        for _ in range(reps):
            for key, fn in variants.items():
                samples[key].append(_time(fn))
        row = {"entry": title, "threads": threads, "docs": n_docs, "reps": reps}
        for key, xs in samples.items():
            row[f"{key}_median_ms"] = statistics.median(xs)
            row[f"{key}_min_ms"] = min(xs)
        for stat in ("median", "min"):
            row[f"patch_speedup_{stat}"] = row[f"unpatched_{stat}_ms"] / row[f"patched_{stat}_ms"]
            row[f"kernel_speedup_{stat}"] = row[f"unpatched_{stat}_ms"] / row[f"kernel_{stat}_ms"]
        rows.append(row)
        print(
            f"{threads} thr | {title}: unpatched {row['unpatched_median_ms']:.2f} ms, patched "
            f"{row['patched_median_ms']:.2f} ms ({row['patch_speedup_median']:.2f}x), kernel "
            f"{row['kernel_median_ms']:.2f} ms ({row['kernel_speedup_median']:.2f}x)",
            flush=True,
        )
    return rows


def markdown(rows: list[dict], machine: str) -> str:
    lines = [
        f"# Patched vs unpatched library scoring, CPU ({machine})",
        "",
        "1 query (Lq 32) x docs of length 20-180, dim 128, fp32, random unit vectors; medians (min) of "
        "interleaved calls. Speedup = unpatched time / patched (or kernel) time.",
        "",
        "| entry point | threads | unpatched ms | patched ms | patch speedup | kernel ms | kernel speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['entry']} | {r['threads']} | {r['unpatched_median_ms']:.2f} ({r['unpatched_min_ms']:.2f}) | "
            f"{r['patched_median_ms']:.2f} ({r['patched_min_ms']:.2f}) | {r['patch_speedup_median']:.2f}x "
            f"({r['patch_speedup_min']:.2f}x) | {r['kernel_median_ms']:.2f} ({r['kernel_min_ms']:.2f}) | "
            f"{r['kernel_speedup_median']:.2f}x ({r['kernel_speedup_min']:.2f}x) |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/compat_speed")
    args = parser.parse_args(argv)
    rows = [r for t in args.threads for r in run(t, args.docs, args.reps, args.seed)]
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, cpu ISA "
    machine += cf.backends.load("cpu").cpu_isa()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compat_speed.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    (out / "compat_speed.md").write_text(markdown(rows, machine))
    print(f"wrote {out / 'compat_speed.json'} and {out / 'compat_speed.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
