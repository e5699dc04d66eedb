#!/usr/bin/env bash
# The timing-sensitive tests, run again and again while busy loops hold the cores: what a loaded CI runner, or a
# Raspberry Pi doing other work, looks like to them. `make test-stress` calls it. Ends with how many runs there
# were and how many failed (and which tests failed, how often); exits 1 when any run failed.
#
#   scripts/stress.sh                               # 5 runs of the default set, 2 busy loops
#   STRESS_RUNS=1 scripts/stress.sh tests/fleet/test_signing.py
#
# STRESS_RUNS (default 5), STRESS_BUSY (busy loops, default 2), PY (default .venv/bin/python); arguments, when
# given, replace the default set of tests (pytest paths and options).
set -u -o pipefail  # a run's status is pytest's, not tee's
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
runs=${STRESS_RUNS:-5}
busy=${STRESS_BUSY:-2}
if [ $# -gt 0 ]; then
    tests=("$@")
else
    # The fleet (broker, acks, deploys), the device's MQTT link, the kiosk's web server, field collection, live swaps,
    # and edgecls run.
    tests=(tests/fleet tests/edge_app/link tests/edge_app/kiosk/test_web*.py tests/edge_app/kiosk/test_field.py tests/edge_app/kiosk/test_collect.py
           tests/edge_app/live/test_swap.py tests/edge_app/live/test_app*.py)
fi

logs=$(mktemp -d)
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$logs"
}
trap stop EXIT
trap 'exit 130' INT TERM  # through the EXIT trap: the busy loops never outlive the script

for _ in $(seq "$busy"); do
    "$PY" -c 'while True: pass' &
    pids+=($!)
done

failed=0
for run in $(seq "$runs"); do
    echo "== stress run $run of $runs, $busy busy loop(s) holding the cores =="
    if ! "$PY" -m pytest -q -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$logs/run$run.log"; then
        failed=$((failed + 1))
    fi
done

echo
echo "stress: $runs run(s), $failed failed ($busy busy loop(s); ${tests[*]})"
# pytest's short summary (-ra) names each failed test: how often each failed across the runs.
cat "$logs"/run*.log | grep -E '^(FAILED|ERROR) ' | sed -E 's/ - .*//' | sort | uniq -c | sort -rn
[ "$failed" -eq 0 ]
