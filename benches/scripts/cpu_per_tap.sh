#!/usr/bin/env bash
# The cost of a tap (issue 16): the engine's CPU time per tap against one bare Ed25519
# verify, measured in the same session on the same machine.
#   1. `fareway serve` on 127.0.0.1 (a fresh durable ledger, the sample city) in its own
#      process, and `gate-sim --rate R --duration D --streaming --riders 2000` against it
#      with the engine's metrics: the report's `server_cpu.us_per_tap` is the engine
#      process's CPU time (user and system, every thread) over the window divided by the
#      taps answered; `ledger_sync_us` is the ledger's syncs in the same window,
#      `server_latency_us` the engine's own tap latency, and `ledger_stages_us` where a
#      request's time in the ledger went and how long the engine's threads waited for a
#      core.
#   2. `cargo bench -p fareway-benches --bench token -- bare_ed25519_verify`: one `ring`
#      verify of a 64-byte message, right after.
# Prints both, and their ratio (issue 16's goal: at most 1.5).
#
# Usage: benches/scripts/cpu_per_tap.sh   (RATE, DURATION and FAREWAY, GATE_SIM to change
# the offered taps/s, the seconds, and the binaries; build them first with
# `cargo build --release -p fareway-cli -p gate-sim`; LIMITS adds lines to the server's
# `[limits]`, e.g. LIMITS='write_buffers_mib = 16', docs/configuration.md)
set -euo pipefail

rate=${RATE:-3000}
duration=${DURATION:-30}
target=${CARGO_TARGET_DIR:-target}
fareway=${FAREWAY:-$target/release/fareway}
gate_sim=${GATE_SIM:-$target/release/gate-sim}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mktemp -d)
server=
cleanup() {
  if [[ -n $server ]]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$out"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
metrics_port=$(free_port)

# A token per role; the server keeps their SHA-256 only.
tokens=""
for role in gate admin finance; do
  token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  printf '%s' "$token" > "$out/$role.token"
  sha=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
  tokens+=$'\n'"[[token]]"$'\n'"role = \"$role\""$'\n'"sha256 = \"$sha\""$'\n'"name = \"bench-$role\""$'\n'
done
printf 'provider = []\nissuer_key = []\n' > "$out/issuer-keys.toml"
cat > "$out/server.toml" <<EOF
data_dir = "data"
listen = "127.0.0.1:$port"
metrics_listen = "127.0.0.1:$metrics_port"
fares_file = "$root/docs/sample-city.toml"
issuer_keys_file = "issuer-keys.toml"
$tokens
[limits]
${LIMITS:-}
EOF

RUST_LOG=warn "$fareway" serve --config "$out/server.toml" > "$out/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.1)" 2>/dev/null; then break; fi
  sleep 0.1
done

echo "engine: fareway serve (127.0.0.1:$port); load: gate-sim --rate $rate --duration $duration --streaming --riders 2000"
"$gate_sim" --server "http://127.0.0.1:$port" --metrics "127.0.0.1:$metrics_port" \
  --gate-token-file "$out/gate.token" --admin-token-file "$out/admin.token" \
  --finance-token-file "$out/finance.token" --fares "$root/docs/sample-city.toml" \
  --rate "$rate" --duration "$duration" --streaming --riders 2000 --out "$out/sim" \
  > "$out/sim.log" 2>&1 || { cat "$out/sim.log"; exit 1; }
# The engine's CPU time so far, user and kernel (fields 14 and 15 of /proc/PID/stat, in
# ticks): over the whole process, set-up included, so a share, not a per-tap figure.
read -r user_ticks kernel_ticks < <(sed 's/.*) //' "/proc/$server/stat" | awk '{print $12, $13}')
kill "$server"; wait "$server" 2>/dev/null || true; server=

echo "bare verify: cargo bench -p fareway-benches --bench token -- bare_ed25519_verify"
(cd "$root" && cargo bench -q -p fareway-benches --bench token -- bare_ed25519_verify --noplot) > "$out/bench.log" 2>&1

python3 - "$out" "$user_ticks" "$kernel_ticks" <<'PY'
import json, re, sys
out = sys.argv[1]
report = json.load(open(f"{out}/sim/report.json"))
bench = open(f"{out}/bench.log").read()
# criterion: "time:   [61.2 µs 61.8 µs 62.5 µs]": the middle figure is the estimate.
match = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", bench)
if not match:
    sys.exit(f"no criterion estimate in the bench output:\n{bench}")
value, unit = float(match.group(1)), match.group(2)
verify_us = value * {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3}[unit]
cpu = report["server_cpu"]
syncs = report["ledger_sync_us"]
engine = report["server_latency_us"]
print(f"taps: {report['taps_answered']} of {report['taps_total']} planned answered "
      f"({report['taps_not_sent']} not sent) at {report['taps_per_second']:.0f} taps/s "
      f"(first due time to last answer: {report['duration_s']:.2f} s); "
      f"invariants ok: {report['invariants']['ok']}")
print(f"engine CPU: {cpu['cpu_s']:.2f} s over the window, {cpu['us_per_tap']:.1f} us per tap")
sim = report["latency_us"]
print(f"simulator latency (due to answer): p50 {sim['p50']} us, p99 {sim['p99']} us, p99.9 {sim['p999']} us")
print(f"engine latency (bucket bounds): p50 <= {engine['p50']} us, p99 <= {engine['p99']} us, "
      f"p99.9 <= {engine['p999']} us")
print(f"syncs of the ledger's log: {syncs['syncs']}, p50 <= {syncs['p50']} us, p99 <= {syncs['p99']} us, "
      f"p99.9 <= {syncs['p999']} us, longest <= {syncs['max']} us")
stages = report["ledger_stages_us"]
if stages:
    print("engine ledger per request (bucket bounds, p50/p90): "
          + ", ".join(f"{name} <= {stages[name]['p50']}/{stages[name]['p90']} us"
                      for name in ("queue_wait", "decide_write", "sync_wait"))
          + f"; threads waited {stages['run_delay_us_per_tap']:.0f} us per tap for a core")
stalls = [s for s in report["engine_by_second"] if (s["sync_longest_us"] or 10**7) >= 10_000]
print(f"seconds with a synced write of 10 ms or more: {len(stalls)} of {len(report['engine_by_second'])}: "
      + ", ".join(f"second {s['second']}: sync <= {s['sync_longest_us']} us, taps' p99 <= {s['tap_p99_us']} us"
                  for s in stalls))
user, kernel = int(sys.argv[2]), int(sys.argv[3])
print(f"engine CPU over its whole life: {100 * kernel / max(user + kernel, 1):.0f}% in the kernel "
      f"(system calls: the sync, loopback TCP, waking threads), {100 * user / max(user + kernel, 1):.0f}% in user space")
print(f"bare ring verify: {verify_us:.1f} us")
print(f"CPU per tap / bare verify: {cpu['us_per_tap'] / verify_us:.2f}")
PY
