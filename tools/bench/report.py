#!/usr/bin/env python3
"""Turns the RESULT lines written by tools/bench.sh into the comparison table.

Usage: report.py RESULTS_FILE [--no-storage]

Each line is "RESULT key=value ..." with at least scenario=, broker= and run=.
For every scenario and figure the table gives the median (min-max) over the runs
for Warren and RabbitMQ and the ratio of the medians (Warren / RabbitMQ). With
--no-storage the scenarios that need durable storage are marked "(no storage yet)".
Lines with broker=floor (tools/relay-floor, S6's path with no broker) are summed up
in a note under the table.
"""

import statistics
import sys

BROKERS = ("warren", "rabbitmq")
DURABLE = {"S3", "S4", "S4b", "S8"}
ORDER = ["S1", "S2", "S3", "S4", "S4b", "S5", "S6", "S7", "S8", "S9", "S10"]

# figure label, RESULT key, unit kind (rate, us, cpu, mib, kib, s)
COMMON_TAIL = [
    ("broker CPU s per M msg", "cpu_s_per_M", "cpu"),
    ("broker peak RSS MiB", "broker_peak_rss_kb", "mib"),
]
FIGURES = {
    "S1": [("publish msg/s", "pub_rate", "rate"), ("consume msg/s", "con_rate", "rate")] + COMMON_TAIL,
    "S2": [("publish msg/s", "pub_rate", "rate"), ("consume msg/s", "con_rate", "rate")] + COMMON_TAIL,
    "S3": [("publish msg/s", "pub_rate", "rate"), ("consume msg/s", "con_rate", "rate")] + COMMON_TAIL,
    "S4": [("publish msg/s", "pub_rate", "rate"), ("consume msg/s", "con_rate", "rate"),
           ("latency p50 µs", "p50_us", "us"), ("latency p99 µs", "p99_us", "us")] + COMMON_TAIL,
    "S4b": [("publish msg/s", "pub_rate", "rate"), ("drain msg/s", "con_rate", "rate")] + COMMON_TAIL,
    "S5": [("publish msg/s", "pub_rate", "rate"), ("deliveries/s", "con_rate", "rate"),
           ("broker CPU s per M deliveries", "cpu_s_per_M", "cpu"),
           ("broker peak RSS MiB", "broker_peak_rss_kb", "mib")],
    "S6": [("publish msg/s", "pub_rate", "rate"), ("consume msg/s", "con_rate", "rate"),
           ("latency p50 µs", "p50_us", "us"), ("latency p99 µs", "p99_us", "us"),
           ("latency p99.9 µs", "p999_us", "us"), ("latency max µs", "max_us", "us")] + COMMON_TAIL,
    "S7": [("publish msg/s", "pub_rate", "rate"), ("consume msg/s", "con_rate", "rate")] + COMMON_TAIL,
    "S8": [("publish msg/s (backlog)", "pub_rate", "rate"),
           ("broker peak RSS MiB (backlog)", "backlog_rss_kb", "mib"),
           ("restart to first delivery s", "restart_s", "s"),
           ("drain msg/s", "drain_rate", "rate"),
           ("broker CPU s per M msg (publish)", "cpu_s_per_M", "cpu")],
    "S9": [("broker RSS KiB per connection", "rss_per_conn_kb", "kib"),
           ("broker RSS MiB before (idle)", "rss_before_kb", "mib"),
           ("broker peak RSS MiB", "broker_peak_rss_kb", "mib"),
           ("time to open 1000 connections s", "open_s", "s")],
    "S10": [("publish msg/s", "pub_rate", "rate"), ("dead letters consumed/s", "con_rate", "rate")]
    + COMMON_TAIL,
}


def parse(path):
    rows = []
    with open(path) as f:
        for line in f:
            if not line.startswith("RESULT "):
                continue
            kv = {}
            for tok in line.split()[1:]:
                k, _, v = tok.partition("=")
                kv[k] = v
            rows.append(kv)
    return rows


def num(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x


def fmt(v, kind):
    if v is None:
        return "-"
    if kind == "rate":
        if v >= 1e6:
            return "%.2fM" % (v / 1e6)
        if v >= 1e4:
            return "%.0fk" % (v / 1e3)
        if v >= 1e3:
            return "%.1fk" % (v / 1e3)
        return "%.0f" % v
    if kind == "us":
        return "%.0f" % v if v >= 10 else "%.1f" % v
    if kind == "cpu":
        return "%.1f" % v if v >= 1 else "%.2f" % v
    if kind == "mib":
        return "%.1f" % (v / 1024.0)
    if kind == "kib":
        return "%.1f" % v
    if kind == "s":
        return "%.2f" % v
    return str(v)


def cell(values, kind):
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med, kind)
    return "%s (%s–%s)" % (fmt(med, kind), fmt(min(values), kind), fmt(max(values), kind))


def values_of(rows, key, kind):
    out = []
    for r in rows:
        v = num(r.get(key))
        if v is None or v < 0:
            continue
        if kind in ("rate",) and v == 0:
            continue
        out.append(v)
    return out


def check_cell(rows):
    """'0 / 0' when every run had no loss and no duplicate, else what failed."""
    if not rows:
        return "-"
    bad = [r for r in rows if r.get("status") != "ok"]
    lost = sum(int(num(r.get("lost")) or 0) for r in rows)
    dup = sum(int(num(r.get("dup")) or 0) for r in rows)
    if not bad:
        return "0 / 0" if any("lost" in r for r in rows) else "ok"
    why = []
    if lost or dup:
        why.append("lost %d, dup %d" % (lost, dup))
    if any(r.get("timeout") == "1" for r in bad):
        why.append("timeout")
    if any((num(r.get("errors")) or 0) > 0 for r in bad) and not (lost or dup):
        why.append("errors")
    return "FAILED %d/%d runs (%s)" % (len(bad), len(rows), ", ".join(why) or "see log")


def floor_note(rows):
    """The S6 latency floor measured by relay-floor in the same run, if any."""
    if not rows:
        return None
    ok = [r for r in rows if r.get("status") == "ok"]
    parts = []
    for name, key in (("p50", "p50_us"), ("p99", "p99_us"), ("p99.9", "p999_us"), ("max", "max_us")):
        parts.append("%s %s" % (name, cell(values_of(ok, key, "us"), "us")))
    bad = len(rows) - len(ok)
    status = ("every message arrived once, in order, in every run" if not bad
              else "FAILED %d/%d runs (see log)" % (bad, len(rows)))
    return ("S6 floor, no broker (tools/relay-floor: the same paced producer, a relay process "
            "that only forwards, a consumer acking each message), µs: %s; %s."
            % (", ".join(parts), status))


def main():
    args = sys.argv[1:]
    no_storage = "--no-storage" in args
    args = [a for a in args if a != "--no-storage"]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    rows = parse(args[0])
    by = {}
    for r in rows:
        by.setdefault((r.get("scenario"), r.get("broker")), []).append(r)
    scens = [s for s in ORDER if any((s, b) in by for b in BROKERS)]
    out = []
    out.append("| scen | figure | Warren | RabbitMQ | Warren/RabbitMQ |")
    out.append("| --- | --- | --- | --- | --- |")
    for s in scens:
        first = True
        label = s + (" (no storage yet)" if no_storage and s in DURABLE else "")
        for name, key, kind in FIGURES[s]:
            w = values_of(by.get((s, "warren"), []), key, kind)
            q = values_of(by.get((s, "rabbitmq"), []), key, kind)
            ratio = "-"
            if w and q and statistics.median(q) > 0:
                ratio = "%.2f" % (statistics.median(w) / statistics.median(q))
            out.append("| %s | %s | %s | %s | %s |" % (label if first else "", name,
                                                      cell(w, kind), cell(q, kind), ratio))
            first = False
        out.append("| | lost / dup | %s | %s | |" % (check_cell(by.get((s, "warren"), [])),
                                                      check_cell(by.get((s, "rabbitmq"), []))))
    runs = {}
    for (s, b), rs in by.items():
        runs[b] = max(runs.get(b, 0), len(rs))
    print("\n".join(out))
    print()
    note = floor_note(by.get(("S6", "floor"), []))
    if note and "S6" in scens:
        print(note)
        print()
    print("median (min–max) over %s runs per broker; ratio of medians: above 1 is better for "
          "rates, below 1 is better for CPU, RSS, latency and times."
          % ("/".join(str(runs.get(b, 0)) for b in BROKERS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
