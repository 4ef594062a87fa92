#!/usr/bin/env python3
"""The soak test's application and its checker (driven by `cargo xtask soak`).

    workload.py write  --db DB --journal J --stats S --seed N [--rate R] [--checkpoint-busy-ms M]
    workload.py verify --db RESTORED --journal J --seed N
    workload.py compare A B

Commit k (k = 1, 2, ...) is a pure function of (seed, k) and the state after commit
k - 1, so the state after any commit is known without keeping copies of it:

* table t holds rows (id, k, payload): `k` is the commit that last wrote the row and
  `payload` is derived from (seed, id, k), so every row checks itself;
* table meta holds, in the same transaction, k, the row count and an order-independent
  digest of the rows (the sum of a hash of (id, k) over all rows, mod 2**64);
* the journal gets, after each COMMIT returns, one fixed-size record for that commit:
  (time before BEGIN, time after COMMIT, digest, row count), in nanoseconds since the
  epoch. Record k - 1 is commit k; a commit is in the journal only once it is durable
  in the WAL. The journal is written with one write(2) per commit (no fsync: only the
  replicator is ever killed, never this process or the machine).

A restored database is then exactly "the state after commit k" iff its integrity check
passes, every row's payload matches (seed, id, k), and the row count and digest match
both its meta row and journal record k. A torn transaction or a gap fails the digest.
"""
import argparse
import hashlib
import itertools
import os
import signal
import sqlite3
import struct
import sys
import time
import traceback

RECORD = struct.Struct("<QQQQ")  # t_begin_ns, t_end_ns, digest, rows
MASK = (1 << 64) - 1
# Rows older than the newest WINDOW ids are deleted as new ones arrive, so the database
# stops growing after a few minutes (about 10 MB) while every page keeps changing.
WINDOW = 20_000
BUSY_TIMEOUT_MS = 5000
# The application checkpoints every 0.5 s to this many ms. While the replicator is down
# nothing else checkpoints (with autocheckpoint off), and the WAL grows ~6 MB/s: this
# keeps it well below the soak's 64 MiB bound, which is the replicator's to keep.
CHECKPOINT_EVERY_MS = 5000


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return x, z ^ (z >> 31)


class Rng:
    """A small deterministic generator, seeded per commit, so commit k's choices
    depend only on (seed, k)."""

    def __init__(self, *words):
        s = 0
        for w in words:
            s, _ = splitmix64(s ^ (w & MASK))
        self.s = s

    def next(self):
        self.s, z = splitmix64(self.s)
        return z

    def range(self, lo, hi):
        """Uniform-ish integer in [lo, hi]."""
        return lo + self.next() % (hi - lo + 1)


def row_hash(rid, k):
    return int.from_bytes(hashlib.blake2b(struct.pack("<QQ", rid, k), digest_size=8).digest(), "little")


def payload(seed, rid, k):
    key = struct.pack("<QQQ", seed, rid, k)
    n = 40 + int.from_bytes(hashlib.blake2b(key, digest_size=2).digest(), "little") % 600
    return hashlib.shake_128(key).hexdigest((n + 1) // 2)[:n]


def to_signed(u):
    return u - (1 << 64) if u >= (1 << 63) else u


class Model:
    """What the database holds: id -> the commit that last wrote the row."""

    def __init__(self):
        self.rows = {}
        self.next_id = 1
        self.floor = 0  # every id <= floor is deleted
        self.digest = 0

    def put(self, rid, k):
        old = self.rows.get(rid)
        if old is not None:
            self.digest = (self.digest - row_hash(rid, old)) & MASK
        self.rows[rid] = k
        self.digest = (self.digest + row_hash(rid, k)) & MASK

    def drop(self, rid):
        old = self.rows.pop(rid, None)
        if old is not None:
            self.digest = (self.digest - row_hash(rid, old)) & MASK

    def random_id(self, rng):
        lo = max(self.floor + 1, self.next_id - WINDOW)
        hi = self.next_id - 1
        return rng.range(lo, hi) if hi >= lo else lo

    def plan(self, seed, k):
        """The operations of commit k: ("ins"|"upd"|"del", id) and ("trim", floor)."""
        rng = Rng(seed, k)
        r = rng.range(0, 999)
        ins = upd = dels = 0
        if r < 1:  # an occasional large transaction: hundreds of pages at once
            ins = rng.range(300, 3000)
        elif r < 600:
            ins = rng.range(1, 3)
        elif r < 800:
            upd = rng.range(1, 2)
        elif r < 900:
            dels = 1
        elif r < 990:
            ins, upd, dels = 1, 1, 1
        else:  # scattered updates: many random pages in one commit
            upd = rng.range(20, 100)
        ops = []
        for _ in range(ins):
            ops.append(("ins", self.next_id))
            self.next_id += 1
        # Updates and deletes pick ids in the window; one that is already deleted is a
        # no-op, in SQL and in the model alike.
        for _ in range(upd):
            ops.append(("upd", self.random_id(rng)))
        for _ in range(dels):
            ops.append(("del", self.random_id(rng)))
        floor = self.next_id - 1 - WINDOW
        if floor > self.floor:
            ops.append(("trim", floor))
        return ops

    def apply(self, ops, k):
        for op, arg in ops:
            if op in ("ins", "upd"):
                if op == "ins" or arg in self.rows:
                    self.put(arg, k)
            elif op == "del":
                self.drop(arg)
            else:
                for rid in range(self.floor + 1, arg + 1):
                    self.drop(rid)
                self.floor = arg


SCHEMA = """
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, payload TEXT NOT NULL);
CREATE INDEX t_k ON t(k);
CREATE TABLE meta(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, rows INTEGER NOT NULL, digest INTEGER NOT NULL);
INSERT INTO meta VALUES (1, 0, 0, 0);
"""


def execute(cur, seed, ops, k):
    for op, arg in ops:
        if op == "ins":
            cur.execute("INSERT INTO t(id, k, payload) VALUES (?, ?, ?)", (arg, k, payload(seed, arg, k)))
        elif op == "upd":
            cur.execute("UPDATE t SET k = ?, payload = ? WHERE id = ?", (k, payload(seed, arg, k), arg))
        elif op == "del":
            cur.execute("DELETE FROM t WHERE id = ?", (arg,))
        else:
            cur.execute("DELETE FROM t WHERE id <= ?", (arg,))


class Stats:
    def __init__(self, path):
        self.path = path
        self.v = {"commits": 0, "rows": 0, "late_resets": 0, "max_txn_ms": 0.0, "max_begin_wait_ms": 0.0, "begin_waits_over_50ms": 0, "autockpt_on_s": 0.0}
        for m in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            self.v[f"ckpt_{m}"] = 0
            self.v[f"ckpt_{m}_busy"] = 0
            self.v[f"ckpt_{m}_max_ms"] = 0.0

    def max(self, key, value):
        self.v[key] = max(self.v[key], value)

    def save(self, **extra):
        self.v.update(extra)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for key, value in self.v.items():
                if isinstance(value, float):
                    value = f"{value:.1f}"
                f.write(f"{key}={value}\n")
        os.replace(tmp, self.path)


def write(a):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    parent = os.getppid()
    stats = Stats(a.stats)

    conn = sqlite3.connect(a.db, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise SystemExit(f"journal_mode=WAL refused: {mode}")
    conn.execute("PRAGMA synchronous=NORMAL")
    cur = conn.cursor()
    cur.executescript(SCHEMA)
    # The journal appears only once the schema is committed: the soak waits for it
    # before starting the replicator.
    fd = os.open(a.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    # SQLite's automatic checkpoint (PASSIVE after a commit past 1000 pages) is on for
    # some stretches and off for others: on, it races with the replicator's own
    # checkpoints, and resets the WAL while the replicator is down (its next start must
    # notice); off, the WAL is bounded only by the replicator and the checkpoints below,
    # and a replicator restarted soon enough finds the WAL as it left it (and resumes).
    autockpt = 0
    autockpt_since = time.monotonic()
    conn.execute("PRAGMA wal_autocheckpoint=0")

    model = Model()
    ckpt_rng = Rng(a.seed, 0xC4EC4)
    modes = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")
    period = 1.0 / a.rate
    next_commit = time.monotonic()
    next_ckpt = next_commit + ckpt_rng.range(500, CHECKPOINT_EVERY_MS) / 1000
    next_save = next_commit + 2
    k = 0
    try:
        while not stop:
            if os.getppid() != parent:
                print("workload: the soak went away; stopping", file=sys.stderr)
                break
            now = time.monotonic()
            if now < next_commit:
                time.sleep(next_commit - now)
            next_commit += period
            if time.monotonic() - next_commit > 1.0:
                # Over a second behind (a stall): keep the rate steady rather than burst.
                stats.v["late_resets"] += 1
                next_commit = time.monotonic()

            k += 1
            ops = model.plan(a.seed, k)
            t_begin = time.time_ns()
            m0 = time.monotonic()
            cur.execute("BEGIN IMMEDIATE")
            wait_ms = (time.monotonic() - m0) * 1000
            stats.max("max_begin_wait_ms", wait_ms)
            stats.v["begin_waits_over_50ms"] += wait_ms > 50
            execute(cur, a.seed, ops, k)
            model.apply(ops, k)
            cur.execute(
                "UPDATE meta SET k = ?, rows = ?, digest = ? WHERE id = 1",
                (k, len(model.rows), to_signed(model.digest)),
            )
            cur.execute("COMMIT")
            t_end = time.time_ns()
            stats.max("max_txn_ms", (time.monotonic() - m0) * 1000)
            os.write(fd, RECORD.pack(t_begin, t_end, model.digest, len(model.rows)))
            stats.v["commits"] = k
            stats.v["rows"] = len(model.rows)

            now = time.monotonic()
            if now >= next_ckpt:
                mode = modes[ckpt_rng.range(0, 3)]
                # A short busy timeout for the checkpoint only: FULL, RESTART and
                # TRUNCATE wait for every reader, and the replicator always holds one.
                conn.execute(f"PRAGMA busy_timeout={a.checkpoint_busy_ms}")
                c0 = time.monotonic()
                busy, _, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                stats.max(f"ckpt_{mode}_max_ms", (time.monotonic() - c0) * 1000)
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                stats.v[f"ckpt_{mode}"] += 1
                stats.v[f"ckpt_{mode}_busy"] += busy
                next_ckpt = time.monotonic() + ckpt_rng.range(500, CHECKPOINT_EVERY_MS) / 1000
                if ckpt_rng.range(0, 3) == 0:
                    if autockpt:
                        stats.v["autockpt_on_s"] += time.monotonic() - autockpt_since
                    autockpt = 0 if autockpt else 1000
                    autockpt_since = time.monotonic()
                    conn.execute(f"PRAGMA wal_autocheckpoint={autockpt}")
            if now >= next_save:
                if autockpt:
                    stats.v["autockpt_on_s"] += now - autockpt_since
                    autockpt_since = now
                stats.save()
                next_save = now + 2
    except Exception:
        traceback.print_exc()
        stats.save(error=f"commit {k}: {sys.exc_info()[1]}".replace("\n", " "))
        sys.exit(1)
    os.close(fd)
    # Compare the model with the database itself: the checks of restores rely on it.
    got = conn.execute("SELECT (SELECT count(*) FROM t), (SELECT k FROM meta WHERE id = 1)").fetchone()
    digest = 0
    for rid, rk in conn.execute("SELECT id, k FROM t"):
        digest = (digest + row_hash(rid, rk)) & MASK
    conn.close()
    if autockpt:
        stats.v["autockpt_on_s"] += time.monotonic() - autockpt_since
    if got != (len(model.rows), k) or digest != model.digest:
        stats.save(error=f"the model differs from the database: {got} {digest:x} vs {len(model.rows)} {model.digest:x}")
        sys.exit(1)
    stats.save(done=1)


def read_record(journal, k, wait_s=5.0):
    """Journal record of commit k (k >= 1), waiting briefly for a record that is being
    appended; None if the journal never gets that long."""
    deadline = time.monotonic() + wait_s
    while True:
        with open(journal, "rb") as f:
            f.seek((k - 1) * RECORD.size)
            b = f.read(RECORD.size)
        if len(b) == RECORD.size:
            return RECORD.unpack(b)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def verify(a):
    """Prints `ok k=K rows=N` if the database is exactly the state after commit K."""
    uri = "file:" + a.db + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    ic = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    if ic != ["ok"]:
        return fail(f"integrity_check: {ic[:5]}")
    k, rows, digest = conn.execute("SELECT k, rows, digest FROM meta WHERE id = 1").fetchone()
    digest &= MASK
    if k == 0:
        want_rows, want_digest = 0, 0
    else:
        rec = read_record(a.journal, k)
        if rec is None:
            return fail(f"meta says commit {k}, which the writer never journaled")
        _, _, want_digest, want_rows = rec
    if (rows, digest) != (want_rows, want_digest):
        return fail(f"k={k}: meta (rows={rows}, digest={digest:x}) is not journal record {k} (rows={want_rows}, digest={want_digest:x})")
    n, got = 0, 0
    for rid, rk, p in conn.execute("SELECT id, k, payload FROM t ORDER BY id"):
        if rk > k:
            return fail(f"k={k}: row {rid} was written by the later commit {rk}: a torn transaction")
        if p != payload(a.seed, rid, rk):
            return fail(f"k={k}: row {rid} (written by commit {rk}) has a wrong payload ({len(p)} bytes)")
        n += 1
        got = (got + row_hash(rid, rk)) & MASK
    if (n, got) != (want_rows, want_digest):
        return fail(f"k={k}: the rows (count {n}, digest {got:x}) are not the state after commit {k} (count {want_rows}, digest {want_digest:x}): lost or extra writes")
    print(f"ok k={k} rows={n}")
    return 0


def fail(msg):
    print(f"FAIL {msg}")
    return 1


def dump(path):
    conn = sqlite3.connect("file:" + path + "?mode=ro", uri=True)
    conn.execute("BEGIN")
    yield from conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT LIKE '\\_litestream%' ESCAPE '\\' ORDER BY type, name"
    )
    yield from conn.execute("SELECT * FROM meta ORDER BY id")
    yield from conn.execute("SELECT * FROM t ORDER BY id")
    conn.close()


def compare(a):
    """Prints `same rows=N` if both databases hold the same schema and rows."""
    n = 0
    for n, (x, y) in enumerate(itertools.zip_longest(dump(a.a), dump(a.b)), 1):
        if x != y:
            short = lambda r: None if r is None else tuple(str(v)[:60] for v in r)
            return fail(f"line {n}: {short(x)} vs {short(y)}")
    print(f"same lines={n}")
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--db", required=True)
    w.add_argument("--journal", required=True)
    w.add_argument("--stats", required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--rate", type=float, default=200.0)
    w.add_argument("--checkpoint-busy-ms", type=int, default=250)
    v = sub.add_parser("verify")
    v.add_argument("--db", required=True)
    v.add_argument("--journal", required=True)
    v.add_argument("--seed", type=int, required=True)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    a = p.parse_args()
    if a.cmd == "write":
        write(a)
        return 0
    try:
        return verify(a) if a.cmd == "verify" else compare(a)
    except Exception as e:  # a database that cannot be read as expected is a mismatch
        return fail(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.exit(main())
