"""Watches a follower database for `cargo xtask bench` (the follow scenario): every
few milliseconds, in a new read transaction, the highest commit counter in `bench`
(see writer.py), and one line `ns k` each time it changes. Errors from a follower
that shows readers a torn state are counted, not fatal.

    follow_sampler.py DB OUT SECONDS
"""
import sqlite3
import struct
import sys
import time

path, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.time() + seconds
conn = None
last, errors = -1, 0
with open(out, "w") as f:
    while time.time() < end:
        try:
            if conn is None:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            row = conn.execute("SELECT v FROM bench ORDER BY id DESC LIMIT 1").fetchone()
            k = struct.unpack(">Q", row[0][8:16])[0] if row else 0
            if k != last:
                f.write(f"{time.time_ns()} {k}\n")
                f.flush()
                last = k
        except sqlite3.Error:
            errors += 1
            conn = None
        time.sleep(0.005)
print(errors)
