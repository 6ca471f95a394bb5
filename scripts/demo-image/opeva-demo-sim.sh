#!/bin/sh
# Demo "simulator": opeva-demo-sim --config PATH --job_id ID
# Prints the config and a few progress lines, writes
#   /data/jobs/<id>/progress/progress.json and /data/jobs/<id>/results/result.json.
# Env: DEMO_SIM_STEPS (10), DEMO_SIM_DELAY (seconds per step, 1),
#      DEMO_SIM_EXIT_CODE (0; non-zero makes the run fail), DEMO_SIM_DATA (/data).
set -eu

config="" job_id=""
while [ $# -gt 0 ]; do
    case "$1" in
        --config) config=${2:-}; shift 2 ;;
        --config=*) config=${1#*=}; shift ;;
        --job_id|--job-id) job_id=${2:-}; shift 2 ;;
        --job_id=*|--job-id=*) job_id=${1#*=}; shift ;;
        *) echo "opeva-demo-sim: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$config" ] || { echo "opeva-demo-sim: --config PATH is required" >&2; exit 2; }
[ -n "$job_id" ] || { echo "opeva-demo-sim: --job_id ID is required" >&2; exit 2; }
[ -r "$config" ] || { echo "opeva-demo-sim: cannot read config $config" >&2; exit 2; }

steps=${DEMO_SIM_STEPS:-10}
delay=${DEMO_SIM_DELAY:-1}
data=${DEMO_SIM_DATA:-/data}
job_dir=$data/jobs/$job_id
mkdir -p "$job_dir/progress" "$job_dir/results"

# PID 1 in a container gets no default signal handling: stop on TERM/INT ourselves.
trap 'echo "opeva-demo-sim: stopped by signal"; exit 143' TERM INT

echo "opeva-demo-sim: job $job_id, config $config"
echo "----- config -----"
cat "$config"
echo "------------------"

i=0
while [ "$i" -lt "$steps" ]; do
    i=$((i + 1))
    sleep "$delay"
    pct=$((i * 100 / steps))
    echo "step $i/$steps (${pct}%)"
    printf '{"job_id": "%s", "step": %d, "total_steps": %d, "percent": %d}\n' \
        "$job_id" "$i" "$steps" "$pct" >"$job_dir/progress/progress.tmp"
    mv "$job_dir/progress/progress.tmp" "$job_dir/progress/progress.json"
done

code=${DEMO_SIM_EXIT_CODE:-0}
if [ "$code" = 0 ]; then status=ok; else status=error; fi
printf '{"job_id": "%s", "status": "%s", "steps": %d, "config": "%s", "exit_code": %d}\n' \
    "$job_id" "$status" "$steps" "$config" "$code" >"$job_dir/results/result.json"
echo "opeva-demo-sim: done ($status)"
exit "$code"
