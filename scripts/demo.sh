#!/usr/bin/env bash
# Demo: one job end to end on this machine, no registry and no NFS needed.
#   reference backend (opeva-devserver)  <->  job-worker-agent  ->  docker job
# Builds the demo job image opeva-demo-sim:latest, submits configs/demo.yaml,
# waits for the job, prints its log and final status. Everything lives in ./.demo
# Env: DEMO_PORT (default 8765; another free port when busy), DEMO_TIMEOUT (120 s).
set -euo pipefail

die() { echo "demo: ERROR: $*" >&2; exit 1; }
say() { echo "demo: $*"; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/bootstrap.sh
bash scripts/build_demo_image.sh opeva-demo-sim:latest

py=$root/.venv/bin/python
demo=$root/.demo
shared=$demo/shared
mkdir -p "$shared/configs" "$demo/state"

# Small HTTP client: http METHOD URL [JSON-BODY]; prints the answer's body.
http() {
    "$py" - "$@" <<'PY'
import sys, urllib.request
method, url = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as answer:
    sys.stdout.write(answer.read().decode())
PY
}
field() { "$py" -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"; }

port=${DEMO_PORT:-8765}
if ! "$py" -c 'import socket, sys; socket.create_server(("127.0.0.1", int(sys.argv[1]))).close()' "$port" 2>/dev/null; then
    port=$("$py" -c 'import socket; s = socket.create_server(("127.0.0.1", 0)); print(s.getsockname()[1])')
    say "port ${DEMO_PORT:-8765} is busy, using $port"
fi
server=http://127.0.0.1:$port

devserver_pid="" worker_pid=""
cleanup() {
    for pid in $worker_pid $devserver_pid; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

say "starting opeva-devserver on $server (log: .demo/devserver.log)"
"$root/.venv/bin/opeva-devserver" --host 127.0.0.1 --port "$port" --shared-dir "$shared" \
    --job-image opeva-demo-sim:latest >"$demo/devserver.log" 2>&1 &
devserver_pid=$!
for _ in $(seq 50); do
    http GET "$server/health" >/dev/null 2>&1 && break
    kill -0 "$devserver_pid" 2>/dev/null || { cat "$demo/devserver.log" >&2; die "opeva-devserver exited"; }
    sleep 0.2
done
http GET "$server/health" >/dev/null || die "opeva-devserver does not answer on $server"

cat >"$shared/configs/demo.yaml" <<'YAML'
# Demo experiment for opeva-demo-sim
experiment: demo
episodes: 1
seed: 42
YAML

say "starting job-worker-agent (log: .demo/worker.log)"
OPEVA_SERVER=$server WORKER_ID=demo-worker OPEVA_SHARED_DIR=$shared \
WORKER_IMAGE=opeva-demo-sim:latest ALLOWED_IMAGES='opeva-demo-sim:*' IMAGE_PULL_POLICY=if-not-present \
WORKER_STATE_DIR=$demo/state METRICS_PORT=0 POLL_INTERVAL=1 STATUS_POLL_INTERVAL=2 \
    "$root/.venv/bin/job-worker-agent" run --exit-after-job >"$demo/worker.log" 2>&1 &
worker_pid=$!

answer=$(http POST "$server/run-simulation" \
    '{"config_path": "configs/demo.yaml", "job_name": "demo", "target_host": "demo-worker"}') \
    || die "POST /run-simulation failed"
job_id=$(field job_id <<<"$answer")
[ -n "$job_id" ] || die "no job_id in the answer: $answer"
say "submitted job $job_id; waiting for it (about 10 s)"

status="" deadline=$((SECONDS + ${DEMO_TIMEOUT:-120}))
while [ "$SECONDS" -lt "$deadline" ]; do
    status=$(http GET "$server/status/$job_id" | field status) || status=""
    case "$status" in finished|failed|stopped|canceled) break ;; esac
    if ! kill -0 "$worker_pid" 2>/dev/null; then
        tail -n 20 "$demo/worker.log" >&2
        die "job-worker-agent exited while the job was '$status'"
    fi
    sleep 1
done

log=$shared/jobs/$job_id/logs/$job_id.log
echo "----- job log: ${log#"$root"/} -----"
cat "$log" 2>/dev/null || echo "(no log file)"
echo "----- end of job log -----"
say "final status of job $job_id: ${status:-unknown}"
[ "$status" = finished ] || die "the job did not finish (worker log: .demo/worker.log)"
say "results: ${shared#"$root"/}/jobs/$job_id/results/result.json"
