"""How long the disk takes to make an append durable: appends 300 bytes and calls
fdatasync N times, and prints the latency percentiles. A tap is answered only after such
a sync (docs/PERFORMANCE.md), so this is the floor under a tap's latency.

Usage: python3 benches/scripts/fsync_probe.py FILE_ON_THE_DATA_DISK N [PAUSE_SECONDS]
"""

import os
import sys
import time


def main():
    path, count = sys.argv[1], int(sys.argv[2])
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    latencies = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 300)
            started = time.perf_counter()
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - started) * 1e6)
            if pause:
                time.sleep(pause)
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()

    def at(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    print(
        f"n={count} mean={sum(latencies) / count:.0f}us p50={at(0.5):.0f} p90={at(0.9):.0f} "
        f"p99={at(0.99):.0f} p999={at(0.999):.0f} max={latencies[-1]:.0f}"
    )


if __name__ == "__main__":
    main()
