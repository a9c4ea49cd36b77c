#!/usr/bin/env python3
"""Does shutting an ext4 file system down lose a write whose fdatasync succeeded?

Why this exists: `tests/disk_trouble.rs` kills the engine's disk with EXT4_IOC_SHUTDOWN
and then checks that no tap the engine acknowledged is lost. With the flag
EXT4_GOING_FLAGS_NOLOGFLUSH that test failed now and then: the tap answered last before
the shutdown was missing after the remount. This script shows the loss is the kernel's,
not the engine's: with no RocksDB and no engine, one thread appends 200-byte records and
fdatasyncs each one, the file system is shut down under it, mounted again from its image,
and the last acknowledged record is looked for.

Usage (root; loop devices, mkfs.ext4, fallocate):
    python3 tests/scripts/ext4_shutdown_trial.py FLAG TRIALS [prealloc]
FLAG is the shutdown ioctl's flag: 0 EXT4_GOING_FLAGS_DEFAULT (freeze, then shut down),
1 LOGFLUSH, 2 NOLOGFLUSH. `prealloc` preallocates the file as RocksDB does its log.
Prints each trial that lost an acknowledged record, then the count. Measured results
are in docs/testing.md.
"""
import fcntl
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time

EXT4_IOC_SHUTDOWN = 0x8004587D
RECORD = 200


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def attach_and_mount(image, at):
    device = run("losetup", "-f", "--show", image)
    run("mount", device, at)
    return device


def one_trial(folder, flag, prealloc):
    """Returns (acknowledged, found): the last record whose fdatasync succeeded, and
    the last of the unbroken run of records found after the remount."""
    image, at = os.path.join(folder, "image"), os.path.join(folder, "mnt")
    os.makedirs(at, exist_ok=True)
    with open(image, "wb") as file:
        file.truncate(64 << 20)
    run("mkfs.ext4", "-q", "-F", image)
    devices = [attach_and_mount(image, at)]
    path = os.path.join(at, "log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    if prealloc:
        run("fallocate", "-n", "-l", "8M", path)
    acknowledged = [0]

    def append_and_sync():
        number = 0
        while True:
            number += 1
            try:
                os.write(fd, struct.pack("<Q", number).ljust(RECORD, b"x"))
                os.fdatasync(fd)
            except OSError:
                return
            acknowledged[0] = number

    writer = threading.Thread(target=append_and_sync)
    writer.start()
    time.sleep(random.uniform(0.05, 0.3))
    mount_fd = os.open(at, os.O_RDONLY)
    fcntl.ioctl(mount_fd, EXT4_IOC_SHUTDOWN, struct.pack("I", flag))
    os.close(mount_fd)
    writer.join()
    os.close(fd)
    run("umount", "-l", at)
    devices.append(attach_and_mount(image, at))
    with open(path, "rb") as file:
        data = file.read()
    found = 0
    for offset in range(0, len(data) - RECORD + 1, RECORD):
        if struct.unpack("<Q", data[offset:offset + 8])[0] != found + 1:
            break
        found += 1
    run("umount", at)
    for device in devices:
        subprocess.run(["losetup", "-d", device], check=False)
    return acknowledged[0], found


def main():
    flag, trials = int(sys.argv[1]), int(sys.argv[2])
    prealloc = sys.argv[3:] == ["prealloc"]
    lost = 0
    with tempfile.TemporaryDirectory() as folder:
        for trial in range(trials):
            acknowledged, found = one_trial(folder, flag, prealloc)
            if found < acknowledged:
                lost += 1
                print(f"trial {trial}: record {acknowledged} acknowledged, {found} found")
    print(f"flag {flag}{' prealloc' if prealloc else ''}: "
          f"{lost} of {trials} trials lost an acknowledged record")


if __name__ == "__main__":
    main()
