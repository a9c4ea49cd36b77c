#!/usr/bin/env bash
# Offline taps uploaded per second against online taps answered per second, one run after
# the other in the same session on the same machine (issue 15's benchmark):
#   1. `fareway demo --link-loss 1` with a rush hour of about 200,000 taps: every gate
#      loses its link for the middle half of the window, decides alone and queues (about
#      100,000 taps), and when the link is back every gate uploads its queue at once;
#      the report's `link_loss.upload_taps_per_second` is the upload's rate.
#   2. `fareway demo --link-loss 0` (streaming) with a rush hour offered far above what
#      the engine answers: its `taps_per_second` is the online streaming rate at
#      saturation.
# Both without faults. Prints both rates and their ratio, and whether every invariant
# (the scan-order pricing of every rider's day included) held.
#
# Usage: benches/scripts/upload_vs_online.sh   (PEAK_UPLOAD, PEAK_ONLINE, DURATION and
# FAREWAY to change the offered peaks in taps/s, the seconds, and the fareway binary)
set -euo pipefail

peak_upload=${PEAK_UPLOAD:-9000}
peak_online=${PEAK_ONLINE:-16000}
duration=${DURATION:-30}
fareway=${FAREWAY:-${CARGO_TARGET_DIR:-target}/release/fareway}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "upload: fareway demo --link-loss 1 --rush-peak $peak_upload --duration $duration --fault-rate 0"
"$fareway" demo --link-loss 1 --rush-peak "$peak_upload" --duration "$duration" \
  --fault-rate 0 --riders 20000 --out "$out/upload" > "$out/upload.log"
echo "online: fareway demo --link-loss 0 --rush-peak $peak_online --duration $duration --fault-rate 0"
"$fareway" demo --link-loss 0 --rush-peak "$peak_online" --duration "$duration" \
  --fault-rate 0 --riders 20000 --out "$out/online" > "$out/online.log" || true

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
upload = json.load(open(f"{out}/upload/report.json"))
online = json.load(open(f"{out}/online/report.json"))
loss = upload["link_loss"]
print(f"upload: {loss['gates_offline']} gates uploaded {loss['taps_uploaded']} offline taps "
      f"({loss['taps_left_queued']} left queued) in {loss['upload_s']:.2f} s: "
      f"{loss['upload_taps_per_second']:.0f} taps/s; invariants ok: {upload['invariants']['ok']}")
print(f"online: {online['taps_answered']} taps answered, {online['taps_not_sent']} not sent, "
      f"{online['taps_per_second']:.0f} taps/s (streaming, offered above saturation); "
      f"invariants ok: {online['invariants']['ok']}")
print(f"upload / online: {loss['upload_taps_per_second'] / online['taps_per_second']:.2f}")
PY
