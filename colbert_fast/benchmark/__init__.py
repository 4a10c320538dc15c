"""The measuring library behind `colbert-fast bench` and `colbert-fast profile`.

It lives inside the package so the console commands work from an installed wheel; the
repository's bench/ folder (never installed) holds only the pytest-benchmark files, the GPU
check script and the committed results, and imports this package, never the other way round.

    workloads   the workloads of docs/perf.md (R1 R2 R3 X1 X2 P1 T1), their quick and tiny scalings
    counters    useful FLOPs, the padded baseline's FLOPs, minimum bytes
    timing      CUDA-event / perf_counter timers with cache flushing, peak memory
    peaks       the device's own copy bandwidth and matmul rate, measured in the same run
    baselines   the plain-PyTorch padded baseline (pad + bmm + masked max + sum), eager and compiled
    peers       adapters for other libraries, used when importable
    runner      runs every implementation on every workload, checks it, measures it
    report      terminal table, JSON, CSV, markdown, plots, --compare
    profiling   named ranges, the torch.profiler run and the ncu command of `colbert-fast profile`
    collections E1, the synthetic clustered collection (colbert_fast.testing re-exports it)
    engines     end-to-end search beside the engine peers (fast-plaid, xtr-warp-rs): workloads E1
                and E2, each engine in a subprocess over the same exported embeddings
    engine_driver  the subprocess side of `engines` (run by the peers' own interpreter too)

The commands themselves (argument parsing, printing) are colbert_fast/cli/bench.py and profile.py.
The padded plain-PyTorch row every speedup is measured against is the "baseline"; "reference"
means only colbert_fast.reference, the fp32 oracle every row is checked against.
"""
