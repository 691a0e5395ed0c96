#!/usr/bin/env bash
# The GPU machine class in one call: every GPU target of the frameworks the device image holds
# (torch, JAX, ONNX Runtime; it has no TensorFlow or Keras), run under a time budget, then the
# results, the report merged with a CPU run's results where one is given, and a short account,
# all under one folder. Nothing here needs the network: missing packages come from wheels
# brought along (benchmarks/gpu/fetch-wheels.sh fills benchmarks/gpu/wheels/ on a machine that
# has it).
#
#   benchmarks/gpu/run.sh OUT [pytest arguments...]
#
# CONFORMANCE_GPU_KIT_BUDGET_S   seconds the checks may take (default 390: the device allows one
#                                call of 8 minutes, and the merge, report and account follow)
# CONFORMANCE_GPU_KIT_WORKERS    xdist workers sharing the GPU (default 4)
# CONFORMANCE_GPU_KIT_CPU        a CPU run's results.json to merge beside the GPU's (optional)
# CONFORMANCE_GPU_STAND_IN=cpu   the dry run: GPU targets run on the CPU (CI runs the kit so)
#
# Exit status: 0 when the kit produced its results, report and account (the conformance
# verdict is in the account and in pytest.status), non-zero when it could not.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
OUT="${1:?usage: benchmarks/gpu/run.sh OUT [pytest arguments...]}"
shift
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
BUDGET_S="${CONFORMANCE_GPU_KIT_BUDGET_S:-390}"
WORKERS="${CONFORMANCE_GPU_KIT_WORKERS:-4}"
PYTHON="${PYTHON:-python3}"
started=$(date +%s)

# The suite's own dependencies that the image lacks, from the wheels brought along.
if ! "$PYTHON" -c "import jsonschema" 2>/dev/null; then
    if ! ls benchmarks/gpu/wheels/*.whl >/dev/null 2>&1; then
        echo "jsonschema is missing and benchmarks/gpu/wheels/ is empty: run benchmarks/gpu/fetch-wheels.sh" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/conformance-site \
        benchmarks/gpu/wheels/*.whl || exit 2
    export PYTHONPATH="/tmp/conformance-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The package from this checkout, installed or not (the plugin is then named with -p).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# The checks, under the budget; what finished is streamed to results.jsonl as it goes, so a run
# the budget stops still has its results (the report then says it was interrupted).
timeout --signal=TERM --kill-after=20 "$BUDGET_S" "$PYTHON" -m pytest cases -p conformance.plugin \
    -p no:cacheprovider -q -n "$WORKERS" -m "gpu and (torch or jax or onnxruntime)" \
    --conformance-json="$OUT/results.json" --conformance-html=none "$@" >"$OUT/pytest.log" 2>&1
status=$?
echo "$status" >"$OUT/pytest.status"
results="$OUT/results.json"
[ -s "$results" ] || results="$OUT/results.jsonl"
if [ ! -s "$results" ]; then
    echo "no results were written (pytest exit $status); the end of its output:" >&2
    tail -n 40 "$OUT/pytest.log" >&2
    exit 1
fi

# The report: the GPU's results beside a CPU run's where one is given.
inputs=("$results")
[ -n "${CONFORMANCE_GPU_KIT_CPU:-}" ] && inputs+=("$CONFORMANCE_GPU_KIT_CPU")
"$PYTHON" -m conformance merge "${inputs[@]}" -o "$OUT/merged.json" --html "$OUT/index.html" >"$OUT/merge.log" 2>&1 \
    || { cat "$OUT/merge.log" >&2; exit 1; }
"$PYTHON" benchmarks/gpu/account.py "$results" --pytest-status "$status" --budget "$BUDGET_S" \
    --seconds "$(($(date +%s) - started))" >"$OUT/ACCOUNT.md" || exit 1
# What comes back from a device is limited in size: the results travel compressed.
gzip -f -9 "$OUT/merged.json"
[ "$results" = "$OUT/results.json" ] && gzip -f -9 "$OUT/results.json"
rm -f "$OUT/results.jsonl" "$OUT/merge.log"
cat "$OUT/ACCOUNT.md"
