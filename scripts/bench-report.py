#!/usr/bin/env python3
"""Turns the raw output of `cargo bench` into the tables of BENCHMARKS.md.

No number in the generated parts of BENCHMARKS.md is typed by hand: every
table is copied from the raw bench output, every ratio in "Targets of issue
#4" is computed here from those tables, and "The run" is filled from an
environment file recorded around the run.

Subcommands:

  env [--end]           print facts about the machine and the checkout
                        (start of run) or the end time and load (--end);
                        append them to a `.env` file next to the results.
  sample SECONDS        print the load average and the busiest processes
                        every SECONDS until killed (a log of the load during
                        the run).
  render RESULTS [--env FILE] [--load-log FILE] [--previous OLD] [--doc BENCHMARKS.md]
                        rewrite the regions of BENCHMARKS.md between
                        `<!-- report:NAME -->` and `<!-- /report:NAME -->`.
  check RESULTS [--doc BENCHMARKS.md]
                        list the numbers in the hand-written prose of
                        BENCHMARKS.md that appear nowhere in the raw output
                        nor in the generated regions (to review by eye:
                        computed figures say so next to them).

Typical use (from the workspace root):

  f=benches/results/$(date -u +%F)-full
  scripts/bench-report.py env > $f.env
  scripts/bench-report.py sample 10 > $f.load & s=$!
  cargo bench 2>&1 | tee $f.txt
  kill $s; scripts/bench-report.py env --end >> $f.env
  scripts/bench-report.py render $f.txt --env $f.env --load-log $f.load \\
      --previous benches/results/2026-11-26-full.txt
"""

import datetime as _dt
import os
import re
import subprocess
import sys
import time

# Inputs that are not measured by the benches (stated in issue #4).
GO_VALKEYLOCK_T10_US = 77.0      # Go valkeylock, scenario 1, T = 10, µs/op
SPEEDUP_VS_GO = 4.0              # target: at least 4x the Go figure
T1_VS_FLOOR_MAX = 1.3            # scenario 1, T = 1: at most 1.3x the raw floor
CROSS_VS_FLOOR_MAX = 1.5         # scenario 2: at most 1.5x the raw floor
FAIRNESS_MAX = 1.5               # max/min ops per task
P999_WAIT_MAX_US = 5000.0        # p99.9 wait for the lock
EVENT_SLACK_US = 1000.0          # wake-up / loss detection p99 <= round trip + 1 ms
MEM_PER_LOCK_MAX_BYTES = 4096.0  # memory per held lock < 4 KiB


# ---------------------------------------------------------------- env / sample

def _sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001 - best effort facts
        return ""


def _now():
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cmd_env(end):
    if end:
        print(f"end: {_now()}")
        print(f"end_load: {_loadavg()}")
        return
    cpuinfo = open("/proc/cpuinfo").read()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    meminfo = open("/proc/meminfo").read()
    mem = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.M)
    swap = re.search(r"^SwapTotal:\s*(\d+)", meminfo, re.M)
    print(f"start: {_now()}")
    print(f"start_load: {_loadavg()}")
    print(f"commit: {_sh('git rev-parse --short HEAD')}")
    dirty = _sh("git status --porcelain --untracked-files=no")
    print(f"tree: {'uncommitted changes to tracked files' if dirty else 'clean (no changes to tracked files)'}")
    print(f"nproc: {_sh('nproc')}")
    print(f"model: {model.group(1) if model else '?'}")
    hyp = re.search(r"^flags.*\bhypervisor\b", cpuinfo, re.M)
    print(f"hypervisor: {'yes' if hyp else 'no'}")
    print(f"memtotal_kb: {mem.group(1) if mem else '?'}")
    print(f"swaptotal_kb: {swap.group(1) if swap else '?'}")
    print(f"kernel: {_sh('uname -r')}")
    print(f"valkey: {_sh('valkey-server --version')}")
    print(f"rustc: {_sh('rustc --version')}")
    others = [l for l in _sh("ps -eo comm=").splitlines()
              if re.match(r"(cargo|rustc|valkey-server|cc1|ld|locks-|events-|scale-)", l.strip())]
    print(f"other_cargo_processes: {len(others)}")
    print(f"tracked_changes: {', '.join(l.split(None, 1)[1] for l in dirty.splitlines()) or 'none'}")


def cmd_sample(period):
    while True:
        # The second of two iterations one second apart: the first one's
        # %CPU is not over a known interval.
        out = _sh("top -b -d 1 -n 2 -w 200").split("\n\n")
        top = "\n".join(out[-1].splitlines()[1:5]) if out else ""
        busy = "; ".join(" ".join(l.split()[i] for i in (0, 8, 11)) for l in top.splitlines()
                         if len(l.split()) >= 12)
        print(f"{_now()} load {_loadavg()} | top pid/%cpu/cmd: {busy}", flush=True)
        time.sleep(period)


# ---------------------------------------------------------------- parsing

class Table:
    def __init__(self, lines):
        self.lines = lines
        self.header = _cells(lines[0])
        self.rows = [dict(zip(self.header, _cells(l))) for l in lines[2:]]

    def text(self):
        return "\n".join(self.lines)

    def find(self, **want):
        """The one row whose columns equal `want` (keys: header cells with
        spaces and punctuation replaced by `_`, lower case)."""
        hits = [r for r in self.rows
                if all(r.get(_col(self.header, k)) == v for k, v in want.items())]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} rows match {want} in table {self.header}")
        return hits[0]


def _col(header, key):
    for h in header:
        if re.sub(r"\W+", "_", h.lower()).strip("_") == key:
            return h
    raise KeyError(f"no column {key} in {header}")


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def num(s):
    return float(s.replace(",", ""))


class Binary:
    """The output of one bench binary."""

    def __init__(self, name):
        self.name = name
        self.header = ""      # "# x bench: …"
        self.mode = ""        # "# mode: …"
        self.tables = {}      # key → Table
        self.notes = {}       # key → text lines
        self.load = ""

    def table(self, key):
        return self.tables[key]


def parse(path):
    text = open(path, encoding="utf-8").read()
    bins = {}
    cur = None
    heading = None
    pending = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s+Running benches/(\w+)\.rs", line)
        if m:
            cur = bins.setdefault(m.group(1), Binary(m.group(1)))
            heading = None
            i += 1
            continue
        if cur is None:
            i += 1
            continue
        if re.match(r"# \w+ bench:", line):
            cur.header = line[2:]
            lm = re.search(r"load average at start (.*)$", line)
            cur.load = lm.group(1).strip() if lm else ""
        elif line.startswith("# mode:"):
            cur.mode = line[2:]
        elif line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("Reference, same process"):
            heading = "Reference"
        elif line.startswith("Commands per second at the server"):
            heading = "Commands per second"
            cur.notes["breakdown"] = []
        elif line.startswith("- ") and heading == "Commands per second":
            cur.notes["breakdown"].append(line)
        elif line.startswith("valkeylock split over"):
            cur.notes["split"] = [line]
        elif line.startswith("Server commands (INFO commandstats"):
            cur.notes["anatomy"] = [line]
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            key = heading or _cells(block[0])[0]
            if key in cur.tables:
                key = f"{key} #{len([k for k in cur.tables if k.startswith(key)]) + 1}"
            cur.tables[key] = Table(block)
            continue
        i += 1
    return bins


def table_by_prefix(b, prefix):
    hits = [k for k in b.tables if k.startswith(prefix)]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} tables start with {prefix!r} in {b.name}: {list(b.tables)}")
    return b.tables[hits[0]]


def read_env(path):
    env = {}
    if path and os.path.exists(path):
        for line in open(path, encoding="utf-8"):
            if ": " in line:
                k, v = line.rstrip("\n").split(": ", 1)
                env[k] = v
    return env


# ---------------------------------------------------------------- formatting

def f1(x):
    return f"{x:.1f}"


def _parse_time(s):
    return _dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S UTC")


def _dur(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s"


# ---------------------------------------------------------------- regions

def region_run(bins, env, load_log, results_path, compile_s):
    b_any = next(iter(bins.values()))
    start, end = env.get("start", "?"), env.get("end", "?")
    dur = ""
    if start != "?" and end != "?":
        total = (_parse_time(end) - _parse_time(start)).total_seconds()
        dur = f" ({_dur(total)}"
        if compile_s is not None:
            dur += f", of which {compile_s:.2f} s `Finished` compiling: the benches were built beforehand"
        dur += ")"
    mem_kb = env.get("memtotal_kb", "?")
    mem = f"MemTotal {int(mem_kb):,} kB ({int(mem_kb) / 1024 / 1024:.1f} GiB)" if mem_kb.isdigit() else "?"
    swap = "no swap" if env.get("swaptotal_kb") == "0" else f"SwapTotal {env.get('swaptotal_kb', '?')} kB"
    hyp = " (a VM: `hypervisor` flag)" if env.get("hypervisor") == "yes" else ""
    loads = ", ".join(f"{n} `{bins[n].load}`" for n in ("events", "locks", "scale") if n in bins)
    rows = [
        ("command", f"`cargo bench 2>&1 \\| tee {results_path}` (all three bench targets, full mode)"),
        ("date", f"{start} – {end[11:] if end != '?' else '?'}{dur}"),
        ("machine", f"`nproc` {env.get('nproc', '?')}; `/proc/cpuinfo` model name `{env.get('model', '?')}`{hyp}; {mem}, {swap}; Linux {env.get('kernel', '?')}"),
        ("Valkey", f"`valkey-server --version`: `{_short_valkey(env.get('valkey', '?'))}` (started with `--save \"\" --appendonly no`, loopback only)"),
        ("Rust", f"{' '.join(env.get('rustc', '?').split()[:2])}, `bench` profile (release)"),
        ("tokio", "multi-threaded runtime, default worker count (2)"),
        ("valkeylock source", f"commit `{env.get('commit', '?')}` (`git rev-parse --short HEAD`); uncommitted changes to tracked files: "
                              f"{env.get('tracked_changes', '?')}"),
    ]
    load = (f"load average (1/5/15 min) before the run `{env.get('start_load', '?')}` "
            f"(no other cargo, rustc or test process running: {env.get('other_cargo_processes', '?')} found); "
            f"at the start of each bench binary (as printed by it): {loads}; after the run `{env.get('end_load', '?')}`")
    if load_log:
        ones = [float(m.group(1)) for m in re.finditer(r"load (\S+) ", load_log)]
        others = _foreign(load_log)
        if ones:
            load += (f". Sampled every 10 s during the run ({len(ones)} samples): 1-min load "
                     f"{min(ones):.2f}–{max(ones):.2f}, mean {sum(ones) / len(ones):.2f}")
        load += (f"; busiest processes in those samples: {others}" if others else "")
    rows.append(("load", load))
    out = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def _short_valkey(v):
    m = re.match(r"(Valkey server v=\S+).*?(malloc=\S+ bits=\d+)", v)
    return f"{m.group(1)} … {m.group(2)}" if m else v


def _foreign(load_log):
    """Processes other than the benches and their servers seen in the top
    samples (by name, with the highest %CPU seen)."""
    seen = {}
    for line in load_log.splitlines():
        if "|" not in line:
            continue
        for item in line.split("|", 1)[1].split(":", 1)[-1].split(";"):
            parts = item.split()
            if len(parts) != 3:
                continue
            _, cpu, name = parts
            try:
                c = float(cpu)
            except ValueError:
                continue
            seen[name] = max(seen.get(name, 0.0), c)
    ranked = sorted(seen.items(), key=lambda kv: -kv[1])[:6]
    return ", ".join(f"`{n}` (up to {c:.0f} %)" for n, c in ranked)


def region_noise(bins):
    locks = bins["locks"]
    crit = table_by_prefix(locks, "Criterion")
    fixed = table_by_prefix(locks, "Fixed-duration")
    a = crit.find(benchmark="lock_unlock", impl="valkeylock", tasks_lockers="1")
    b = crit.find(benchmark="uncontended", impl="valkeylock", tasks_lockers="1")
    fa = fixed.find(scenario="lock_unlock", impl="valkeylock", tasks="1")
    fb = fixed.find(scenario="uncontended", impl="valkeylock", tasks="1")
    return ("The same workload measured twice in this run (`lock_unlock/valkeylock/1`\n"
            "and `uncontended/valkeylock/1` are both one task locking one name through one\n"
            f"`Locker`) gave {a['µs/op']} and {b['µs/op']} µs/op, and the two fixed-duration runs of it\n"
            f"{fa['ops/s']} and {fb['ops/s']} ops/s.")


def region_targets(bins):
    locks, events, scale = bins["locks"], bins["events"], bins["scale"]
    crit = table_by_prefix(locks, "Criterion")
    fixed = table_by_prefix(locks, "Fixed-duration")
    ev = table_by_prefix(events, "Event latencies")
    sc = table_by_prefix(scale, "locks held")
    anat = table_by_prefix(locks, "Anatomy")

    def c(bench, imp, n):
        return num(crit.find(benchmark=bench, impl=imp, tasks_lockers=str(n))["µs/op"])

    rows = []

    def verdict(ok, how):
        return ("**met**" if ok else "**missed**") + f" ({how})"

    # (1) scenario 1, T = 10.
    goal = GO_VALKEYLOCK_T10_US / SPEEDUP_VS_GO
    v10, r10, raw10 = c("lock_unlock", "valkeylock", 10), c("lock_unlock", "rslock", 10), c("lock_unlock", "raw", 10)
    speed = GO_VALKEYLOCK_T10_US / v10
    ci10 = crit.find(benchmark="lock_unlock", impl="valkeylock", tasks_lockers="10")["95% CI µs"]
    lo10, hi10 = (num(x) for x in ci10.split("–"))
    fx10 = 1e6 / num(fixed.find(scenario="lock_unlock", impl="valkeylock", tasks="10")["ops/s"])
    straddle = ("; the 95 % CI " + ci10 + " µs straddles the limit" if lo10 <= goal <= hi10 else "")
    rows.append((
        "1. lock_unlock T = 10: µs/op vs Go valkeylock (77 µs)",
        f"≥ {SPEEDUP_VS_GO:.0f}× faster, i.e. ≤ {goal:.2f} µs/op",
        f"{f1(v10)} µs/op (`lock_unlock/valkeylock/10`); fixed run {fx10:.1f} µs/op (1 / ops/s)",
        verdict(speed >= SPEEDUP_VS_GO,
                f"{speed:.2f}× faster than 77 µs; "
                + (f"{goal - v10:.2f} µs/op under the limit" if v10 <= goal else f"{v10 - goal:.2f} µs/op over the limit")
                + straddle + f"; the fixed run gives {GO_VALKEYLOCK_T10_US / fx10:.2f}×"),
    ))
    rows.append((
        "1. lock_unlock T = 10: vs rslock (and the raw floor)",
        "(comparison)",
        f"rslock {f1(r10)}, raw {f1(raw10)} µs/op",
        f"valkeylock is {r10 / v10:.1f}× faster than rslock and {raw10 / v10:.1f}× faster than the raw floor",
    ))
    fx = fixed.find(scenario="lock_unlock", impl="valkeylock", tasks="10")
    fair, p999 = num(fx["fairness max/min"]), num(fx["wait p99.9 µs"])
    rows.append((
        "1. lock_unlock T = 10: fairness",
        f"max/min ops per task ≤ {FAIRNESS_MAX:.1f}",
        f"{fx['fairness max/min']} (fixed run)",
        verdict(fair <= FAIRNESS_MAX, f"{FAIRNESS_MAX - fair:.2f} under the limit" if fair <= FAIRNESS_MAX
                else f"{fair - FAIRNESS_MAX:.2f} over the limit"),
    ))
    rows.append((
        "1. lock_unlock T = 10: p99.9 wait",
        f"≤ {P999_WAIT_MAX_US / 1000:.0f} ms",
        f"{fx['wait p99.9 µs']} µs (fixed run)",
        verdict(p999 <= P999_WAIT_MAX_US, f"{p999 / P999_WAIT_MAX_US * 100:.0f} % of the limit"),
    ))
    def vs_floor(v, raw, limit, extra=""):
        """Verdict of `v` µs/op against `limit` × the floor's `raw`."""
        r = v / raw
        return verdict(r <= limit, f"{r:.2f}× the floor; the limit is {limit * raw:.1f} µs/op, "
                       + (f"{limit * raw - v:.1f} µs/op to spare" if r <= limit
                          else f"{v - limit * raw:.1f} µs/op over it")
                       + extra)

    def fixed_ratio(scen, n):
        return (num(fixed.find(scenario=scen, impl="raw", tasks=str(n))["ops/s"])
                / num(fixed.find(scenario=scen, impl="valkeylock", tasks=str(n))["ops/s"]))

    v1, raw1 = c("lock_unlock", "valkeylock", 1), c("lock_unlock", "raw", 1)
    rows.append((
        "1. lock_unlock T = 1: vs the raw floor",
        f"≤ {T1_VS_FLOOR_MAX}× the floor",
        f"{f1(v1)} vs {f1(raw1)} µs/op",
        vs_floor(v1, raw1, T1_VS_FLOOR_MAX, f"; the fixed runs give {fixed_ratio('lock_unlock', 1):.2f}×"),
    ))
    # (2) cross_locker.
    for n in (2, 4):
        v, raw = c("cross_locker", "valkeylock", n), c("cross_locker", "raw", n)
        rows.append((
            f"2. cross_locker N = {n}: vs the raw floor",
            f"≤ {CROSS_VS_FLOOR_MAX}× the floor",
            f"{f1(v)} vs {f1(raw)} µs/op",
            vs_floor(v, raw, CROSS_VS_FLOOR_MAX, f"; the fixed runs give {fixed_ratio('cross_locker', n):.2f}×"),
        ))
    # (2) the same with one process per locker.
    procs = table_by_prefix(locks, "Cross-locker, separate processes")
    for n in (2, 4):
        v = num(procs.find(impl="valkeylock", processes=str(n))["µs/op (1 / ops/s)"])
        raw = num(procs.find(impl="raw", processes=str(n))["µs/op (1 / ops/s)"])
        rows.append((
            f"2. cross_locker, {n} separate processes: vs the raw floor",
            f"≤ {CROSS_VS_FLOOR_MAX}× the floor",
            f"{f1(v)} vs {f1(raw)} µs/op (1 / ops/s of the fixed run)",
            vs_floor(v, raw, CROSS_VS_FLOOR_MAX),
        ))
    # (3) events: p99 vs one round trip + 1 ms.
    ping_idle = ev.find(scenario="wakeup (floor)")
    rtt = num(ping_idle["p50 µs"])
    ping_hot = [r for r in anat.rows if r["step"].startswith("raw client `PING`")][0]
    rtt_hot = num(ping_hot["p50 µs"])
    for scen, label in (("wakeup", "wake-up (scenario 4)"), ("loss_detection", "loss detection (scenario 5)")):
        row = ev.find(scenario=scen, impl="valkeylock")
        p99 = num(row["p99 µs"])
        lim = rtt + EVENT_SLACK_US
        lim_hot = rtt_hot + EVENT_SLACK_US
        rows.append((
            f"3. {label} p99",
            f"≤ one round trip + 1 ms = {f1(rtt)} + 1000 = {f1(lim)} µs (round trip: p50 of the `PING` after the same idle pause, events bench)",
            f"{row['p99 µs']} µs (p50 {row['p50 µs']})",
            verdict(p99 <= lim, (f"{lim - p99:.1f} µs under the limit" if p99 <= lim else f"{p99 - lim:.1f} µs over it, {p99 / lim:.2f}× the limit")
                    + f"; against the hot-loop `PING` p50 of the anatomy table ({f1(rtt_hot)} µs, limit {f1(lim_hot)} µs) it is "
                    + ("met" if p99 <= lim_hot else "missed")),
        ))
    # (4) extension traffic and memory.
    r10k = sc.find(locks_held="10000")
    evalsha, due = num(r10k["EVALSHA calls/s"]), num(r10k["lock extensions due/s (locks / 2.5 s)"])
    rows.append((
        "4. extension traffic at 10,000 held locks",
        "batched (no numeric target given)",
        f"{r10k['EVALSHA calls/s']} `EVALSHA` calls/s for {r10k['lock extensions due/s (locks / 2.5 s)']} extensions due/s",
        (f"reported: batched, ≈ {due / evalsha:.0f} extensions per script call (extensions due/s ÷ the rounded calls/s)") if evalsha else "reported: no EVALSHA",
    ))
    heap, rss = num(r10k["live heap per lock (bytes)"]), num(r10k["RSS per lock (bytes)"])
    rows.append((
        "4. memory per held lock (10,000 locks)",
        f"< 4 KiB ({MEM_PER_LOCK_MAX_BYTES:.0f} bytes)",
        f"live heap {r10k['live heap per lock (bytes)']} bytes, RSS {r10k['RSS per lock (bytes)']} bytes",
        verdict(heap < MEM_PER_LOCK_MAX_BYTES,
                f"live heap {heap / MEM_PER_LOCK_MAX_BYTES:.2f}× the limit ("
                + (f"{MEM_PER_LOCK_MAX_BYTES - heap:.0f} bytes under" if heap < MEM_PER_LOCK_MAX_BYTES
                   else f"{heap - MEM_PER_LOCK_MAX_BYTES:.0f} bytes over")
                + f"), RSS {rss / MEM_PER_LOCK_MAX_BYTES:.2f}× ("
                + ("under" if rss < MEM_PER_LOCK_MAX_BYTES else "over") + ")"),
    ))
    # (5) idle cost: held, otherwise idle locks.
    for n in ("1000", "10000"):
        r = sc.find(locks_held=n)
        cpu, scpu, cmds = num(r["process CPU (ms per s)"]), num(r["server CPU (ms per s)"]), num(r["all commands/s"])
        nn = int(n)
        rows.append((
            f"5. idle cost: {nn:,} held locks, nothing else",
            "(no numeric target given)",
            f"process CPU {r['process CPU (ms per s)']} ms/s, server CPU {r['server CPU (ms per s)']} ms/s, {r['all commands/s']} commands/s",
            f"reported: {cpu / 10:.1f} % of one core in the client ({cpu * 1000 / nn:.1f} µs of CPU per lock per second), "
            f"{scpu / 10:.1f} % in the server, {cmds / nn:.2f} server commands per lock per second",
        ))
    out = ["| target | goal | measured (from the tables above) | computed verdict |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {m} | {v} |" for a, b, m, v in rows]
    return "\n".join(out)


def region_previous(bins, old_bins, old_path):
    def crit(bs, bench, imp, n):
        return table_by_prefix(bs["locks"], "Criterion").find(
            benchmark=bench, impl=imp, tasks_lockers=str(n))["µs/op"]

    def wakeup_p50(bs):
        return table_by_prefix(bs["events"], "Event latencies").find(scenario="wakeup", impl="valkeylock")["p50 µs"]

    def scale_heap(bs):
        return table_by_prefix(bs["scale"], "locks held").find(locks_held="10000")["live heap per lock (bytes)"]

    pairs = [
        ("`lock_unlock/valkeylock/1`", crit(old_bins, "lock_unlock", "valkeylock", 1), crit(bins, "lock_unlock", "valkeylock", 1), "µs/op"),
        ("`lock_unlock/valkeylock/10`", crit(old_bins, "lock_unlock", "valkeylock", 10), crit(bins, "lock_unlock", "valkeylock", 10), "µs/op"),
        ("`cross_locker/valkeylock/4`", crit(old_bins, "cross_locker", "valkeylock", 4), crit(bins, "cross_locker", "valkeylock", 4), "µs/op"),
        ("the raw floor `lock_unlock/raw/1`", crit(old_bins, "lock_unlock", "raw", 1), crit(bins, "lock_unlock", "raw", 1), "µs/op"),
        ("`wakeup` p50", wakeup_p50(old_bins), wakeup_p50(bins), "µs"),
        ("live heap per held lock at 10,000", scale_heap(old_bins), scale_heap(bins), "bytes"),
    ]
    old_loads = ", ".join(f"{n} `{old_bins[n].load}`" for n in ("events", "locks", "scale") if n in old_bins)
    parts = "; ".join(f"{label} {o} → {n} {unit} ({(num(n) - num(o)) / num(o) * 100:+.0f} %)" for label, o, n, unit in pairs)
    # Describe the previous run from its environment file when it has one.
    old_env = {}
    env_path = os.path.splitext(old_path)[0] + ".env"
    if os.path.exists(env_path):
        for line in open(env_path, encoding="utf-8"):
            key, _, value = line.partition(":")
            old_env.setdefault(key.strip(), value.strip())
    if old_env.get("commit"):
        changes = old_env.get("tracked_changes") or "none"
        what = (f"commit `{old_env['commit']}` (uncommitted changes to tracked files: {changes}; "
                f"other cargo processes at the start: {old_env.get('other_cargo_processes', '?')})")
    else:
        what = "an earlier commit (no environment file recorded)"
    return (f"[`{old_path}`]({old_path}): {what} "
            f"(load at the start of each binary: {old_loads}). Old → new (changes computed): {parts}.")


def generate(bins, env, load_log, results_path, old_bins, old_path, compile_s):
    locks, events, scale = bins["locks"], bins["events"], bins["scale"]
    g = {}
    g["run"] = region_run(bins, env, load_log, results_path, compile_s)
    g["noise"] = region_noise(bins)
    g["locks-mode"] = f"Settings: `{locks.mode}`."
    g["criterion"] = table_by_prefix(locks, "Criterion").text()
    g["fixed"] = table_by_prefix(locks, "Fixed-duration").text()
    g["processes"] = table_by_prefix(locks, "Cross-locker, separate processes").text()
    g["handover"] = table_by_prefix(locks, "Local hand-over bound").text()
    g["alloc"] = table_by_prefix(locks, "Allocations").text() + "\n\n" + "\n".join(locks.notes.get("split", []))
    g["anatomy"] = table_by_prefix(locks, "Anatomy").text() + "\n\n" + "\n".join(locks.notes.get("anatomy", []))
    g["flavour"] = table_by_prefix(locks, "Runtime flavour").text()
    g["events"] = table_by_prefix(events, "Event latencies").text()
    g["scale-mode"] = f"Settings: `{scale.mode}`."
    g["scale"] = table_by_prefix(scale, "locks held").text()
    g["reference"] = table_by_prefix(scale, "Reference").text()
    g["breakdown"] = "\n".join(scale.notes.get("breakdown", []))
    g["targets"] = region_targets(bins)
    if old_bins:
        g["previous"] = region_previous(bins, old_bins, old_path)
    return g


REGION = re.compile(r"(<!-- report:([\w-]+) -->\n)(.*?)(<!-- /report:\2 -->)", re.S)


def cmd_render(args):
    results = args[0]
    opts = dict(zip(args[1::2], args[2::2]))
    doc = opts.get("--doc", "BENCHMARKS.md")
    env = read_env(opts.get("--env"))
    load_log = open(opts["--load-log"], encoding="utf-8").read() if "--load-log" in opts else ""
    old_path = opts.get("--previous")
    old_bins = parse(old_path) if old_path else None
    raw = open(results, encoding="utf-8").read()
    m = re.search(r"Finished `bench` profile .* in ([\d.]+)s", raw)
    compile_s = float(m.group(1)) if m else None
    bins = parse(results)
    g = generate(bins, env, load_log, results, old_bins, old_path, compile_s)
    text = open(doc, encoding="utf-8").read()
    used = set()

    def sub(m):
        name = m.group(2)
        if name not in g:
            raise SystemExit(f"no generator for region {name!r}")
        used.add(name)
        return f"{m.group(1)}{g[name]}\n{m.group(4)}"

    new = REGION.sub(sub, text)
    missing = set(g) - used
    if missing:
        print(f"warning: regions not in {doc}: {sorted(missing)}", file=sys.stderr)
    with open(doc, "w", encoding="utf-8") as f:
        f.write(new)
    print(f"{doc}: {len(used)} regions rewritten from {results}", file=sys.stderr)


NUM = re.compile(r"(?<![\w.`/-])\d[\d,]*(?:\.\d+)?")


def cmd_check(args):
    results = args[0]
    opts = dict(zip(args[1::2], args[2::2]))
    doc = opts.get("--doc", "BENCHMARKS.md")
    text = open(doc, encoding="utf-8").read()
    known = open(results, encoding="utf-8").read()
    for m in REGION.finditer(text):
        known += m.group(3)
    known_nums = {n.replace(",", "") for n in NUM.findall(known)}
    prose = REGION.sub("", text)
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    for lineno, line in enumerate(prose.splitlines(), 1):
        for n in NUM.findall(line):
            if n.replace(",", "") not in known_nums and len(n.replace(",", "")) > 1:
                print(f"{lineno}: {n}: {line.strip()[:120]}")


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "env":
        cmd_env("--end" in rest)
    elif cmd == "sample":
        cmd_sample(float(rest[0]) if rest else 10.0)
    elif cmd == "render":
        cmd_render(rest)
    elif cmd == "check":
        cmd_check(rest)
    else:
        raise SystemExit(f"unknown subcommand {cmd!r}; see --help")


if __name__ == "__main__":
    main(sys.argv[1:])
