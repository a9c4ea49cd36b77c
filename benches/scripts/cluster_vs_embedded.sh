#!/usr/bin/env bash
# Taps per second at saturation, cluster against embedded, one after the other in the same
# session on the same machine: `fareway demo --unary` (one engine, its RocksDB ledger)
# and `fareway demo --cluster --no-failover` (3 nats-servers and 3 nodes on 127.0.0.1),
# both with the same rush hour offered far above what either answers, no faults, unary
# calls (the cluster demo's gates make unary calls spread over the nodes). Prints each
# run's taps answered per second, its latency, and the ratio.
#
# Usage: benches/scripts/cluster_vs_embedded.sh   (PEAK, DURATION and FAREWAY to change
# the offered peak in taps/s, the seconds, and the fareway binary; run .ci/setup first)
set -euo pipefail

peak=${PEAK:-8000}
duration=${DURATION:-20}
fareway=${FAREWAY:-${CARGO_TARGET_DIR:-target}/release/fareway}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

common=(--rush-peak "$peak" --duration "$duration" --fault-rate 0)
echo "embedded: fareway demo --unary ${common[*]}"
"$fareway" demo --unary "${common[@]}" --out "$out/embedded" > "$out/embedded.log"
echo "cluster:  fareway demo --cluster --no-failover ${common[*]}"
"$fareway" demo --cluster --no-failover "${common[@]}" --out "$out/cluster" > "$out/cluster.log"

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rates = {}
for name in ("embedded", "cluster"):
    report = json.load(open(f"{out}/{name}/report.json"))
    rates[name] = report["taps_per_second"]
    latency = report["latency_us"]
    print(f"{name:>8}: {report['taps_answered']} taps answered, {report['taps_not_sent']} not sent, "
          f"{report['taps_per_second']:.0f} taps/s; latency p50 {latency['p50'] / 1000:.1f} ms, "
          f"p99 {latency['p99'] / 1000:.1f} ms; invariants ok: {report['invariants']['ok']}")
print(f"cluster / embedded: {rates['cluster'] / rates['embedded']:.2f}")
PY
