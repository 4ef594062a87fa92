"""The SQLite writer behind `cargo xtask bench`: the same workload for no replicator,
`replica` and Litestream. Uses Python's sqlite3 (the system SQLite), WAL mode,
synchronous=NORMAL, busy_timeout 10 s, autocommit: every INSERT is one transaction.

Every inserted row is 200 bytes: an 8-byte marker, the commit counter k (big-endian
u64), then 184 random bytes. A replica file that contains commit k contains the page
holding row k, so the highest counter found in a file's pages is the newest commit it
carries; the bench reads replica files that way to measure replication lag.

    writer.py create DB [--rows N]                 schema, WAL mode, N rows (counter 0)
    writer.py create-many LIST [--rows N]          the same for every path in file LIST
    writer.py checkpoint DB                        PRAGMA wal_checkpoint(TRUNCATE)
    writer.py fill DB --mib M                      about M MiB of 1000-byte random rows
    writer.py flat DB --seconds S                  commit as fast as possible for S s
    writer.py paced DB --rate R --seconds S --times F
    writer.py sparse DB --count N --gap-min A --gap-max B --seed X --times F
    writer.py multi LIST --rate R --seconds S --times F   LIST: a file of DB paths
    writer.py churn DB --rate R --seconds S [--rows-per-commit K]

--times F gets one line per commit: `db k end_ns latency_ns`, where end_ns is the wall
clock (CLOCK_REALTIME, ns) when the commit returned and latency_ns its duration. The
summary is one JSON object on stdout.
"""
import argparse
import gc
import json
import os
import random
import sqlite3
import struct
import sys
import time

MARKER = b"\xa7RBENCH\x5a"
ROW_BYTES = 200
PAD = ROW_BYTES - len(MARKER) - 8


def connect(path):
    c = sqlite3.connect(path, isolation_level=None, timeout=10)
    c.execute("PRAGMA busy_timeout=10000")
    mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        sys.exit(f"{path}: journal_mode is {mode}, expected wal")
    c.execute("PRAGMA synchronous=NORMAL")
    return c


class Rows:
    """Row payloads without a syscall per row: slices of a random pool."""

    def __init__(self, seed=1):
        self.pool = random.Random(seed).randbytes(1 << 16)
        self.off = 0

    def row(self, k):
        self.off = (self.off + 97) % (len(self.pool) - PAD)
        return MARKER + struct.pack(">Q", k) + self.pool[self.off : self.off + PAD]


def create(path, rows):
    c = connect(path)
    c.execute("CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
    r = Rows(7)
    c.execute("BEGIN")
    for _ in range(rows):
        c.execute("INSERT INTO bench(v) VALUES (?)", (r.row(0),))
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def fill(path, mib):
    c = connect(path)
    c.execute("CREATE TABLE IF NOT EXISTS bulk(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
    c.execute("CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
    # About 3.9 rows of 1000 bytes per 4 KiB page.
    total = int(mib * 1024 * 1024 / 1050)
    batch = 20000
    done = 0
    while done < total:
        n = min(batch, total - done)
        c.execute("BEGIN")
        c.execute(
            "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM s LIMIT ?) "
            "INSERT INTO bulk(v) SELECT randomblob(1000) FROM s",
            (n,),
        )
        c.execute("COMMIT")
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        done += n
    c.close()
    return total


def write_times(path, lines):
    with open(path, "w") as f:
        f.write("".join(lines))


def flat(path, seconds):
    c = connect(path)
    r = Rows()
    ins = "INSERT INTO bench(v) VALUES (?)"
    k = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        k += 1
        c.execute(ins, (r.row(k),))
        if k & 63 == 0 and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t0
    c.close()
    return {"commits": k, "seconds": elapsed, "per_second": k / elapsed}


def paced(path, rate, seconds, times):
    c = connect(path)
    r = Rows()
    ins = "INSERT INTO bench(v) VALUES (?)"
    lines = []
    n = int(rate * seconds)
    late = 0
    t0 = time.perf_counter()
    for k in range(1, n + 1):
        due = t0 + (k - 1) / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.001:
            late += 1
        row = r.row(k)
        a = time.perf_counter_ns()
        c.execute(ins, (row,))
        b = time.perf_counter_ns()
        lines.append(f"0 {k} {time.time_ns()} {b - a}\n")
    elapsed = time.perf_counter() - t0
    c.close()
    write_times(times, lines)
    return {"commits": n, "seconds": elapsed, "late": late}


def sparse(path, count, gap_min, gap_max, seed, times):
    c = connect(path)
    r = Rows()
    rnd = random.Random(seed)
    ins = "INSERT INTO bench(v) VALUES (?)"
    lines = []
    t0 = time.perf_counter()
    for k in range(1, count + 1):
        row = r.row(k)
        a = time.perf_counter_ns()
        c.execute(ins, (row,))
        b = time.perf_counter_ns()
        lines.append(f"0 {k} {time.time_ns()} {b - a}\n")
        if k < count:
            time.sleep(rnd.uniform(gap_min, gap_max))
    elapsed = time.perf_counter() - t0
    c.close()
    write_times(times, lines)
    return {"commits": count, "seconds": elapsed}


def multi(list_file, rate, seconds, times):
    with open(list_file) as f:
        paths = [p.strip() for p in f if p.strip()]
    conns = [connect(p) for p in paths]
    r = Rows()
    ins = "INSERT INTO bench(v) VALUES (?)"
    n_db = len(conns)
    total_rate = rate * n_db
    n = int(total_rate * seconds)
    counters = [0] * n_db
    lines = []
    late = 0
    t0 = time.perf_counter()
    for j in range(n):
        # Round robin: each database commits `rate` times a second, phases spread out.
        due = t0 + j / total_rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.05:
            late += 1
        d = j % n_db
        counters[d] += 1
        k = counters[d]
        row = r.row(k)
        a = time.perf_counter_ns()
        conns[d].execute(ins, (row,))
        b = time.perf_counter_ns()
        lines.append(f"{d} {k} {time.time_ns()} {b - a}\n")
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    write_times(times, lines)
    return {"commits": n, "seconds": elapsed, "late": late}


def churn(path, rate, seconds, rows_per_commit):
    """Updates random rows of the `bulk` table (random pages across the file)."""
    c = connect(path)
    hi = c.execute("SELECT max(id) FROM bulk").fetchone()[0] or 0
    if hi == 0:
        sys.exit(f"{path}: no rows to churn; run fill first")
    rnd = random.Random(42)
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for j in range(n):
        due = t0 + j / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        ids = [rnd.randint(1, hi) for _ in range(rows_per_commit)]
        c.execute("BEGIN")
        c.executemany("UPDATE bulk SET v = randomblob(1000) WHERE id = ?", [(i,) for i in ids])
        c.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    c.close()
    return {"commits": n, "seconds": elapsed}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("target")
    p.add_argument("--rows", type=int, default=0)
    p.add_argument("--mib", type=float)
    p.add_argument("--seconds", type=float)
    p.add_argument("--rate", type=float)
    p.add_argument("--count", type=int)
    p.add_argument("--gap-min", type=float)
    p.add_argument("--gap-max", type=float)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rows-per-commit", type=int, default=4)
    p.add_argument("--times")
    a = p.parse_args()
    # No collector pauses inside timed loops: they would show up as commit latency
    # for every configuration alike and only add noise (the loops allocate little).
    gc.disable()
    if a.mode == "create":
        create(a.target, a.rows)
        out = {"rows": a.rows}
    elif a.mode == "create-many":
        with open(a.target) as f:
            paths = [p.strip() for p in f if p.strip()]
        for path in paths:
            create(path, a.rows)
        out = {"dbs": len(paths), "rows": a.rows}
    elif a.mode == "checkpoint":
        c = connect(a.target)
        out = {"checkpoint": list(c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())}
        c.close()
    elif a.mode == "fill":
        out = {"rows": fill(a.target, a.mib)}
    elif a.mode == "flat":
        out = flat(a.target, a.seconds)
    elif a.mode == "paced":
        out = paced(a.target, a.rate, a.seconds, a.times)
    elif a.mode == "sparse":
        out = sparse(a.target, a.count, a.gap_min, a.gap_max, a.seed, a.times)
    elif a.mode == "multi":
        out = multi(a.target, a.rate, a.seconds, a.times)
    elif a.mode == "churn":
        out = churn(a.target, a.rate, a.seconds, a.rows_per_commit)
    else:
        sys.exit(f"unknown mode {a.mode}")
    out["sqlite_version"] = sqlite3.sqlite_version
    print(json.dumps(out))


if __name__ == "__main__":
    main()
