"""Watches a follower database for `cargo xtask bench` (the follow scenario): every
few milliseconds the highest commit counter in `bench` (see writer.py), read twice,
each time in a new read transaction: on a connection opened for that read (OUT), and
on one connection kept open for the whole run, as an application keeps one (OUT with
`-long` before its extension). One line `ns k` each time the value changes. Errors
(a follower that shows readers a torn state) are counted, not fatal; their count is
printed at the end.

    follow_sampler.py DB OUT SECONDS
"""
import os
import sqlite3
import struct
import sys
import time

path, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
stem, ext = os.path.splitext(out)
uri = f"file:{path}?mode=ro"
end = time.time() + seconds
kept = None
last = {"fresh": -1, "kept": -1}
errors = 0


def newest(conn):
    row = conn.execute("SELECT v FROM bench ORDER BY id DESC LIMIT 1").fetchone()
    return struct.unpack(">Q", row[0][8:16])[0] if row else 0


with open(out, "w") as fresh_out, open(f"{stem}-long{ext}", "w") as kept_out:
    while time.time() < end:
        try:
            c = sqlite3.connect(uri, uri=True, timeout=10)
            k = newest(c)
            c.close()
            if k != last["fresh"]:
                fresh_out.write(f"{time.time_ns()} {k}\n")
                fresh_out.flush()
                last["fresh"] = k
            if kept is None:
                kept = sqlite3.connect(uri, uri=True, timeout=10)
            k = newest(kept)
            if k != last["kept"]:
                kept_out.write(f"{time.time_ns()} {k}\n")
                kept_out.flush()
                last["kept"] = k
        except sqlite3.Error:
            errors += 1
            kept = None
        time.sleep(0.005)
print(errors)
