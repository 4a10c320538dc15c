#!/usr/bin/env bash
# The GPU check, in one call on a lent GPU machine (no package registry there):
#   1. build colbert_fast._C with its CUDA kernels (FORCE_CUDA=1)
#   2. run the whole test suite on the GPU (pytest tests --device cuda)
#   3. run the full benchmark (docs/perf.md workloads, fp16 + bf16, every backend, the baseline,
#      its torch.compile form, and any peer carried as a wheel in .whl/)
#   4. write everything under $OUT and a copy under bench/results/ named by card, date and sha
#
# From the lead's machine (device tool), passing the commit since the copy there has no .git:
#   run(command="COLBERT_FAST_GIT_SHA=<sha> bash bench/gpu_check.sh", timeout_s=600)
# then commit the returned bench.json / bench.md as bench/results/<card>-<date>-<sha>.{json,md}
# (the script prints the exact names). Peers: `pip download --no-deps -d .whl flash-maxsim
# late-interaction-kernels` here, add `.whl` to carry; they are installed under /tmp, never
# into the machine's environment.
#
# Time: the device tool stops a command at 600 s, so each step has its own limit and the
# benchmark writes partial JSON after every workload. Override with BUILD_S, TEST_S, TOTAL_S.
# A dry run of the plumbing on a CPU machine:
#   DEVICE=cpu SKIP_BUILD=1 TEST_ARGS="-k bench" BENCH_ARGS="--tiny --no-compile" bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-570}
BUILD_S=${BUILD_S:-240}
TEST_S=${TEST_S:-150}
DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:---full --dtype fp16,bf16 --sweep --budget 1 --compile-budget ${COMPILE_S:-120}}
TEST_ARGS=${TEST_ARGS:-}
mkdir -p "$OUT" bench/results
LOG="$OUT/gpu_check.log"
START=$(date +%s)
export PYTHONUNBUFFERED=1
log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
left() { echo $(( TOTAL_S - ($(date +%s) - START) )); }

log "start on $(hostname); $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
if [ -z "${COLBERT_FAST_GIT_SHA:-}" ]; then
    COLBERT_FAST_GIT_SHA=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    export COLBERT_FAST_GIT_SHA
fi
log "git sha $COLBERT_FAST_GIT_SHA"

if ls .whl/*.whl >/dev/null 2>&1; then
    log "installing carried peer wheels under /tmp/peers: $(ls .whl)"
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/peers .whl/*.whl >>"$LOG" 2>&1 \
        && export PYTHONPATH=/tmp/peers${PYTHONPATH:+:$PYTHONPATH}
fi

# 1. build
log "build (FORCE_CUDA=1, limit ${BUILD_S}s)"
export FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
BUILD=failed
if [ -n "${SKIP_BUILD:-}" ]; then
    BUILD="skipped (SKIP_BUILD)"
elif timeout "$BUILD_S" $PY -m pip install --no-build-isolation --no-deps --no-index -e . >>"$LOG" 2>&1; then
    BUILD="ok (pip install -e .)"
elif timeout "$BUILD_S" $PY setup.py build_ext --inplace >>"$LOG" 2>&1; then
    BUILD="ok (build_ext --inplace)"
fi
log "build: $BUILD"
$PY -m colbert_fast env 2>&1 | tee -a "$LOG"

# 2. tests on the GPU
log "tests (limit ${TEST_S}s)"
# shellcheck disable=SC2086
timeout "$TEST_S" $PY -m pytest tests --device "$DEVICE" -q -p no:cacheprovider -o addopts="" -rfE $TEST_ARGS 2>&1 | tee "$OUT/tests.txt" >>"$LOG"
TESTS=$(grep -E "(passed|failed|error|no tests ran)" "$OUT/tests.txt" | tail -1)
TESTS=${TESTS:-"tests did not finish within ${TEST_S}s"}
log "tests: $TESTS"
grep -E "^(FAILED|ERROR)" "$OUT/tests.txt" | head -20 | tee -a "$LOG"
cat "$OUT/tests.txt" >>"$LOG" && rm -f "$OUT/tests.txt"

# 3. the full benchmark, in what time is left (minus 15 s to write and copy)
BENCH_S=$(( $(left) - 15 ))
log "benchmark (limit ${BENCH_S}s)"
if [ "$BENCH_S" -gt 30 ]; then
    # shellcheck disable=SC2086
    timeout "$BENCH_S" $PY -m colbert_fast bench --device "$DEVICE" --out "$OUT" $BENCH_ARGS 2>&1 | tee -a "$LOG"
    log "benchmark exit status ${PIPESTATUS[0]} (124 = cut at the time limit: bench.json holds the workloads done)"
else
    log "no time left for the benchmark"
fi

# 4. results: markdown with the build and test lines on top, copies for commit
if [ -f "$OUT/bench.json" ]; then
    $PY - "$OUT" "$BUILD" "$TESTS" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
from colbert_fast.benchmark import report
out, build, tests = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
doc = json.loads((out / "bench.json").read_text())
doc["gpu_check"] = {"build": build, "tests": tests}
report.write_json(doc, out / "bench.json")
head = f"GPU check: build {build}; tests: {tests}" + ("; benchmark PARTIAL (time limit)" if doc.get("partial") else "")
(out / "bench.md").write_text(head + "\n\n" + report.markdown(doc))
card = "".join(c if c.isalnum() else "-" for c in str(doc["device"].get("name", "gpu"))).strip("-").lower()
name = f"{card}-{doc['created'][:10]}-{str(doc['git']['sha'])[:10]}"
for ext in ("json", "md"):
    Path("bench/results", f"{name}.{ext}").write_bytes((out / f"bench.{ext}").read_bytes())
print(f"results for commit: bench/results/{name}.json and .md (copies of {out}/bench.json, bench.md)")
EOF
fi
log "done"
