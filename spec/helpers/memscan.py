#!/usr/bin/env python3
"""Counts secrets left in another process's memory.

    memscan.py NEEDLES -- command args...

NEEDLES holds lines "label hex". The command runs as our child (so its
memory can be read under Yama's ptrace_scope 1), prints READY when it wants
to be looked at, then waits for its stdin to close. Every writable mapping
(heap, stack, anonymous memory, data) is read through /proc/PID/mem, and so
is /proc/PID/environ. Prints one line "label count environ_count" per needle
and never the needle itself; exits with the child's status."""
import subprocess
import sys


CHUNK = 16 << 20
MAX_REGION = 1 << 34  # 16 GiB: larger writable mappings are ASan's shadow


def main():
    split = sys.argv.index("--")
    needles = []
    with open(sys.argv[1]) as f:
        for line in f:
            label, value = line.split()
            needles.append((label, bytes.fromhex(value)))
    child = subprocess.Popen(sys.argv[split + 1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    ready = child.stdout.readline()
    if ready.strip() != b"READY":
        child.stdin.close()
        child.wait()
        sys.stdout.write("child did not get ready: %r\n" % ready)
        sys.exit(2)
    counts = {label: 0 for label, _ in needles}
    with open("/proc/%d/maps" % child.pid) as maps, open("/proc/%d/mem" % child.pid, "rb") as mem:
        for line in maps:
            fields = line.split()
            if "w" not in fields[1]:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if end - start > MAX_REGION:
                continue  # a sanitizer's shadow memory: reserved, not the process's data
            # in windows of CHUNK bytes plus the longest needle's length - 1,
            # counting only copies that start inside the window's CHUNK: one
            # straddling two windows is counted once
            overlap = max(len(n) for _, n in needles) - 1
            for at in range(start, end, CHUNK):
                try:
                    mem.seek(at)
                    data = mem.read(min(CHUNK + overlap, end - at))
                except (OSError, ValueError):
                    break  # e.g. [vvar]: not readable
                for label, needle in needles:
                    found = data.find(needle)
                    while 0 <= found < CHUNK:
                        counts[label] += 1
                        found = data.find(needle, found + 1)
    with open("/proc/%d/environ" % child.pid, "rb") as f:
        environ = f.read()
    child.stdin.close()
    rest = child.stdout.read()
    status = child.wait()
    for label, needle in needles:
        print(label, counts[label], environ.count(needle))
    sys.stdout.write(rest.decode(errors="replace"))
    sys.exit(status)


if __name__ == "__main__":
    main()
