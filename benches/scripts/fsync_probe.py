"""How long the disk takes to make a small write durable: writes 300 bytes and calls
fdatasync N times, and prints the latency percentiles. A tap is answered only after such
a sync (docs/PERFORMANCE.md), so this is the floor under a tap's latency.

Two ways, as RocksDB writes its log:
- `append` (a new log file): each write makes the file longer, so the sync also commits
  the file's new size to the file system's journal;
- `overwrite` (a recycled log file, RocksDB's `recycle_log_file_num`): the file already
  has its length, each write goes over old bytes, so the sync writes data only.

Usage: python3 benches/scripts/fsync_probe.py FILE_ON_THE_DATA_DISK N [PAUSE_SECONDS] [append|overwrite]
"""

import os
import sys
import time

WRITE = b"x" * 300


def main():
    path, count = sys.argv[1], int(sys.argv[2])
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    mode = sys.argv[4] if len(sys.argv) > 4 else "append"
    if mode not in ("append", "overwrite"):
        sys.exit(f"mode must be append or overwrite, not {mode!r}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    latencies = []
    try:
        if mode == "overwrite":
            # An old log's bytes: the whole length written and made durable first.
            os.write(fd, b"\0" * (len(WRITE) * count))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        for _ in range(count):
            os.write(fd, WRITE)
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
        f"{mode}: n={count} mean={sum(latencies) / count:.0f}us p50={at(0.5):.0f} p90={at(0.9):.0f} "
        f"p99={at(0.99):.0f} p999={at(0.999):.0f} max={latencies[-1]:.0f}"
    )


if __name__ == "__main__":
    main()
