#!/usr/bin/env bash
# The GPU check: one prepared command for a lent GPU machine that ends well inside one 540 s
# command and leaves named results under $OUT (8 files, no folders: the device tool returns 8 at most):
#
#   summary.json, summary.md   what ran, how long, pass/fail counts, failures; rewritten after every stage;
#                              the centroid engine's results (bench/engine_gpu.py) are folded in here
#   gpu_check.log              this script's log: environment, build output, benchmark progress
#   tests.log                  every pytest stage's output (failures with tracebacks, -rfE summary)
#   bench_core.json, .md       the core benchmark: bf16 R1 R3 X1 X2 P1 T1, per-call and kernel-only times
#   bench_rest.json, .md       what time allowed of the rest: fp16, the S<K> sweep, peers, torch.compile rows
#
# Stages, each under `timeout -s INT` (pytest still prints and records the failures it saw; the
# benchmark keeps the workloads it finished) with a limit of min(its cap, time left):
#   env        versions, GPU (nvidia-smi), peer wheels from .whl/ installed under /tmp/peers
#   build      in the background: colbert_fast._C with CUDA kernels for this GPU's arch only, no
#              debug info (CFLAGS=-g0), in a scratch directory; the .so is moved into place at the end
#   triton     meanwhile: the Triton conformance, op, launch and no-sync tests and the Inductor
#              test on the GPU, in parallel (pytest-xdist) where it is installed
#   cuda       after the build: the CUDA conformance and op tests, the no-sync test and the centroid
#              engine's no-sync and CUDA-graph test
#   bench_core the core benchmark (bf16; no torch.compile, no peers)
#   engine     the centroid engine on E1 10k then 100k (the second if time allows): bench/engine_gpu.py
#   bench_rest fp16 + sweep + peers + torch.compile rows, in what time is left
#   suite      the rest of the test suite on the GPU, in what time is left
# COLBERT_FAST_REQUIRE_BACKENDS=cuda,triton: a backend that cannot load fails its tests (a failed
# build fails the cuda stage instead of skipping it).
#
# On a lent machine (device tool), passing the commit since the copy there has no .git:
#   run(command="COLBERT_FAST_GIT_SHA=$(git rev-parse HEAD) bash bench/gpu_check.sh", timeout_s=600)
# (compute the sha here and paste it). Peers are optional: wheels for cp312 and torch 2.11 in .whl/
# (flash-maxsim, late-interaction-kernels; fast-plaid 1.7.0.2110 for the end-to-end comparisons),
# named in the call's carry; README.md "The GPU check" says how to fetch them.
#
# A dry run of the plumbing and the time budgeting on a CPU (tests/benchmark/test_gpu_check.py does this):
#   DEVICE=cpu BUILD_CMD="sleep 2" TOTAL_S=100 BENCH_SIZE=--tiny bash bench/gpu_check.sh
#
# Knobs (environment): TOTAL_S (520: the whole check), RESERVE_S (10: kept for the last summary),
# GRACE_S (15: after SIGINT, then SIGKILL), MIN_STAGE_S (20: a stage with less is skipped), the
# caps BUILD_S TRITON_S CUDA_S CORE_S ENGINE_S REST_S SUITE_S, BUILD_CMD, BUILD_JOBS, TEST_WORKERS,
# TRITON_TESTS/TRITON_K, CUDA_TESTS/CUDA_K, SUITE_TESTS/SUITE_K, BENCH_SIZE, CORE_ARGS, REST_ARGS,
# ENGINE_ARGS.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-out/gpu_check}
TOTAL_S=${TOTAL_S:-520}
RESERVE_S=${RESERVE_S:-10}
GRACE_S=${GRACE_S:-15}
MIN_STAGE_S=${MIN_STAGE_S:-20}
BUILD_S=${BUILD_S:-330}
TRITON_S=${TRITON_S:-210}
CUDA_S=${CUDA_S:-100}
CORE_S=${CORE_S:-150}
ENGINE_S=${ENGINE_S:-120}
REST_S=${REST_S:-120}
SUITE_S=${SUITE_S:-600}
NCPU=$(nproc 2>/dev/null || echo 2)
BUILD_JOBS=${BUILD_JOBS:-$(( NCPU > 8 ? 6 : 1 ))}
TEST_WORKERS=${TEST_WORKERS:-$(( NCPU > 8 ? 8 : 1 ))}
TRITON_TESTS=${TRITON_TESTS:-tests/core/test_conformance.py tests/core/test_random_shapes.py tests/backends/test_triton_ops.py tests/backends/test_triton_backward.py tests/backends/test_triton_launch.py tests/core/test_no_sync.py}
TRITON_K=${TRITON_K:-triton}
CUDA_TESTS=${CUDA_TESTS:-tests/core/test_conformance.py tests/core/test_random_shapes.py tests/backends/test_cuda_ops.py tests/core/test_no_sync.py tests/retrieval/test_engine_static.py}
CUDA_K=${CUDA_K:-cuda and not triton}
# The rest: what the two stages above did not select, without the GPU-free compile checks (CI runs
# them). -k matches module names and markers too: "(test_cuda_ops or ...) and cuda" is exactly what
# the cuda stage ran, while a @pytest.mark.cuda test in another file still runs here.
modules() { local m="" f; for f in $1; do m="${m:+$m or }$(basename "$f" .py)"; done; echo "$m"; }
SUITE_TESTS=${SUITE_TESTS:-tests --ignore=tests/backends/test_triton_compile.py --ignore=tests/backends/test_cuda_build.py}
SUITE_K=${SUITE_K-not (($(modules "$TRITON_TESTS")) and ($TRITON_K)) and not (($(modules "$CUDA_TESTS")) and ($CUDA_K))}
if [ "$DEVICE" = cuda ]; then
    BENCH_SIZE=${BENCH_SIZE:---full}
    REQUIRE=${REQUIRE_BACKENDS:-cuda,triton}
    ENGINE_ARGS=${ENGINE_ARGS:---docs 10000,100000 --backends auto,cuda,triton}
else
    BENCH_SIZE=${BENCH_SIZE:---tiny}
    REQUIRE=${REQUIRE_BACKENDS:-triton}
    ENGINE_ARGS=${ENGINE_ARGS:---docs 200 --backends auto --reps 2}
fi
CORE_ARGS=${CORE_ARGS:---workload R1,R3,X1,X2,P1,T1 --dtype bf16 --no-compile --no-peers --reps 20 --budget 0.3 --codecs residual2}
REST_ARGS=${REST_ARGS:---workload R1,R2,R3,X1,X2,P1,T1 --dtype fp16 --sweep --compile --compile-budget 60 --reps 10 --budget 0.2}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOG="$OUT/gpu_check.log"
TESTLOG="$OUT/tests.log"
: >"$LOG"
: >"$TESTLOG"
export PYTHONUNBUFFERED=1
SECONDS=0
T0=$(date +%s)
log() { echo "[gpu_check +${SECONDS}s] $*" | tee -a "$LOG"; }
summary() { $PY bench/gpu_check_summary.py "$1" --out "$OUT" "${@:2}" --elapsed "$SECONDS" >>"$LOG" 2>&1; }
left() { echo $(( TOTAL_S - SECONDS )); }
# The time a stage may take: what is left after the final reserve and the stage's own grace.
avail() { echo $(( TOTAL_S - SECONDS - RESERVE_S - GRACE_S )); }
# A stage's limit: its cap, or the time available if less.
limit_for() {
    local cap=$1 avail
    avail=$(avail)
    echo $(( cap < avail ? cap : avail ))
}
# Skip a stage (recorded in the summary) when less than MIN_STAGE_S is available; else mark it running.
begin_stage() {  # name limit
    if [ "$(avail)" -lt "$MIN_STAGE_S" ]; then
        log "$1: skipped, $(left)s left"
        summary skip --name "$1" --note "no time left ($(left)s of ${TOTAL_S}s)"
        return 1
    fi
    summary running --name "$1" --start "$SECONDS" --limit "$2"
}
# timeout --foreground: SIGINT reaches pytest's controller only, which stops its xdist workers and
# reports (signalling every worker at once left xdist hanging until SIGKILL).
with_limit() { local limit=$1; shift; timeout --foreground -s INT -k "$GRACE_S" "$limit" "$@"; }

if [ -z "${COLBERT_FAST_GIT_SHA:-}" ]; then
    COLBERT_FAST_GIT_SHA=$(git rev-parse HEAD 2>/dev/null || echo unknown)
fi
export COLBERT_FAST_GIT_SHA
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
summary init --device "$DEVICE" --budget "$TOTAL_S" --sha "$COLBERT_FAST_GIT_SHA" --gpu "${GPU:-}"
log "start: device $DEVICE (${GPU:-no GPU}), git $COLBERT_FAST_GIT_SHA, budget ${TOTAL_S}s, $NCPU CPUs, out $OUT"

# ---- env ----------------------------------------------------------------------------------------
start=$SECONDS
if ls .whl/*.whl >/dev/null 2>&1; then
    log "installing carried peer wheels under /tmp/peers: $(ls .whl | tr '\n' ' ')"
    if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/peers .whl/*.whl >>"$LOG" 2>&1; then
        export PYTHONPATH=/tmp/peers${PYTHONPATH:+:$PYTHONPATH}
    else
        log "peer wheels did not install (see above): the benchmark runs without them"
    fi
fi
XDIST=()
if [ "$TEST_WORKERS" -gt 1 ] && $PY -c "import xdist" 2>/dev/null; then
    XDIST=(-n "$TEST_WORKERS")
fi
ARCH=$(with_limit 60 $PY - <<'EOF' 2>>"$LOG"
import torch
print("%d.%d" % torch.cuda.get_device_capability() if torch.cuda.is_available() else "")
EOF
)
ARCH=${TORCH_CUDA_ARCH_LIST:-${ARCH:-9.0}}
with_limit 60 $PY -m colbert_fast env >>"$LOG" 2>&1
rc=$?
summary stage --name env --rc $rc --start $start --end $SECONDS --limit 60 \
    --note "CUDA arch $ARCH; pytest workers ${XDIST[*]:-none (no pytest-xdist or 1 CPU)}"

# ---- build (background) and triton tests ----------------------------------------------------------
start_build=$SECONDS
build_limit=$(limit_for "$BUILD_S")
if [ -n "${BUILD_CMD:-}" ]; then
    build_cmd=$BUILD_CMD
else
    # A scratch build directory, then an atomic rename: the tests running meanwhile never import a
    # half-written .so (an extension from an earlier run on this machine is replaced only at the end).
    build_cmd="$PY setup.py build_ext --build-temp '$WORK/build/temp' --build-lib '$WORK/build/lib' \
        && for so in '$WORK'/build/lib/colbert_fast/_C*.so; do \
               cp \"\$so\" \"colbert_fast/.\$(basename \"\$so\").tmp\" \
               && mv \"colbert_fast/.\$(basename \"\$so\").tmp\" \"colbert_fast/\$(basename \"\$so\")\"; done"
fi
log "build in the background (arch $ARCH, $BUILD_JOBS jobs, limit ${build_limit}s)"
summary running --name build --start "$start_build" --limit "$build_limit"
(
    if [ "$DEVICE" = cuda ]; then export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH"; fi
    export MAX_JOBS="$BUILD_JOBS" CFLAGS="${CFLAGS:-} -g0" CXXFLAGS="${CXXFLAGS:-} -g0"
    # No --foreground: the signal goes to the whole build (ninja, nvcc, cc1plus).
    timeout -s INT -k 20 "$build_limit" bash -c "$build_cmd" >"$WORK/build.log" 2>&1
    echo $? >"$WORK/build.rc"
    echo $(( $(date +%s) - T0 )) >"$WORK/build.end"
) &
BUILD_PID=$!

run_tests() {  # name cap k-expression test paths...
    local name=$1 cap=$2 kexpr=$3
    shift 3
    local limit
    limit=$(limit_for "$cap")
    begin_stage "$name" "$limit" || return 0
    local start=$SECONDS
    log "$name: pytest $* -k '$kexpr' (limit ${limit}s)"
    echo "===== $name: $* -k '$kexpr' =====" >>"$TESTLOG"
    # shellcheck disable=SC2068
    COLBERT_FAST_REQUIRE_BACKENDS=$REQUIRE with_limit "$limit" $PY -m pytest $@ --device "$DEVICE" -q \
        -p no:cacheprovider -o addopts="" -rfE -k "$kexpr" ${XDIST[@]+"${XDIST[@]}"} \
        --junitxml="$WORK/$name.xml" >>"$TESTLOG" 2>&1
    local rc=$?
    summary stage --name "$name" --rc $rc --start $start --end $SECONDS --limit "$limit" --junit "$WORK/$name.xml"
    log "$name: exit $rc after $(( SECONDS - start ))s"
}

run_bench() {  # name cap args...
    local name=$1 cap=$2
    shift 2
    local limit
    limit=$(limit_for "$cap")
    begin_stage "$name" "$limit" || return 0
    local start=$SECONDS
    log "$name: colbert-fast bench $* (limit ${limit}s)"
    # shellcheck disable=SC2068
    with_limit "$limit" $PY -m colbert_fast bench --device "$DEVICE" $BENCH_SIZE $@ --no-plots \
        --out "$WORK/$name" >>"$LOG" 2>&1
    local rc=$?
    summary stage --name "$name" --rc $rc --start $start --end $SECONDS --limit "$limit" \
        --bench "$WORK/$name" --bench-name "${name#bench_}"
    log "$name: exit $rc after $(( SECONDS - start ))s"
}

run_engine() {  # name cap
    local name=$1 cap=$2
    local limit
    limit=$(limit_for "$cap")
    begin_stage "$name" "$limit" || return 0
    local start=$SECONDS
    log "$name: bench/engine_gpu.py $ENGINE_ARGS (limit ${limit}s)"
    # shellcheck disable=SC2086
    with_limit "$limit" $PY bench/engine_gpu.py --device "$DEVICE" --budget $(( limit * 3 / 4 )) $ENGINE_ARGS \
        --out "$WORK/$name" >>"$LOG" 2>&1
    local rc=$?
    summary stage --name "$name" --rc $rc --start $start --end $SECONDS --limit "$limit" \
        --engine "$WORK/$name/engine.json"
    log "$name: exit $rc after $(( SECONDS - start ))s"
}

# shellcheck disable=SC2086
run_tests triton "$TRITON_S" "$TRITON_K" $TRITON_TESTS

log "waiting for the build"
wait "$BUILD_PID"
build_rc=$(cat "$WORK/build.rc" 2>/dev/null || echo 1)
cat "$WORK/build.log" >>"$LOG"
ext=$(with_limit 60 $PY -c "from colbert_fast import extension; r = extension.missing_reason(); print(r or 'extension loads, CUDA kernels: %s' % extension.build_info().get('with_cuda'))" 2>&1 | tail -1)
summary stage --name build --rc "$build_rc" --start "$start_build" --end "$(cat "$WORK/build.end" 2>/dev/null || echo $SECONDS)" \
    --limit "$build_limit" --note "$ext"
log "build: exit $build_rc; $ext"

# ---- cuda tests, benchmarks, the rest ---------------------------------------------------------------
# shellcheck disable=SC2086
run_tests cuda "$CUDA_S" "$CUDA_K" $CUDA_TESTS
# shellcheck disable=SC2086
run_bench bench_core "$CORE_S" $CORE_ARGS
run_engine engine "$ENGINE_S"
# shellcheck disable=SC2086
run_bench bench_rest "$REST_S" $REST_ARGS
# shellcheck disable=SC2086
run_tests suite "$SUITE_S" "$SUITE_K" $SUITE_TESTS

summary finish
log "done in ${SECONDS}s of ${TOTAL_S}s"
rm -rf "$WORK"
cat "$OUT/summary.md"
