#!/usr/bin/env python3
"""Draws docs/bench.svg from benches/results.jsonl (written by `cargo bench --bench load`).

Two panels against subscriber count, one line per transport, from the `fanout` runs:
deliveries per gateway CPU-second, and p99 publish-to-receive latency. Runs with
`--server floor` (one write per delivery, nothing else) are drawn as a dashed grey line:
the most any server could reach on the machine that took them. Runs of the peers
(`--server nchan`, `--server socketio`) are dotted lines of their own. Both axes are
logarithmic. Each point is the latest run for its (transport, subscribers); runs are
compared only at one publish rate (the latest run's, unless --rate says otherwise),
because the rate changes both figures.

Standard library only: the SVG is written by hand.

    python3 scripts/chart.py [--input benches/results.jsonl] [--output docs/bench.svg]
                             [--rate 50] [--all-rates]
"""

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TRANSPORTS = [
    # name, colour, marker, dashes
    ("websocket", "#1f77b4", "circle", None),
    ("sse", "#e6730f", "square", None),
    ("longpoll", "#2ca02c", "triangle", None),
    ("poll", "#c0392b", "diamond", None),
    ("floor", "#777777", "circle", "6 4"),
    ("nchan", "#8e44ad", "square", "2 3"),
    ("nchan-sse", "#d35fb7", "square", "2 3"),
    ("socketio", "#b8860b", "triangle", "2 3"),
]

# Series drawn only when they have runs, and their legend names.
OTHER_SERVERS = {
    "floor": "floor: one write per delivery",
    "nchan": "Nchan WS",
    "nchan-sse": "Nchan SSE",
    "socketio": "Socket.IO",
}

PANELS = [
    # result key, title, unit shown on the axis
    ("deliveries_per_cpu_s", "Deliveries per gateway CPU-second", "deliveries / CPU-s"),
    ("latency_p99_ms", "p99 publish-to-receive latency", "milliseconds"),
]

WIDTH, HEIGHT = 1000, 470
PANEL_W, PANEL_H = 380, 290
TOP = 95
LEFTS = [95, 590]


def load(path):
    """Every fanout line of the results file, oldest first."""
    runs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                run = json.loads(line)
            except json.JSONDecodeError as e:
                print(f"{path}:{number}: skipped, not JSON ({e})", file=sys.stderr)
                continue
            # Subscribers that also follow a channel of their own, or negotiate first on
            # their connection, are other workloads.
            other = run["params"].get("own_channel") or run["params"].get("negotiate")
            if run.get("scenario") == "fanout" and not other:
                runs.append(run)
    return runs


def select(runs, rate, all_rates):
    """The latest run per (transport, subscribers) at the chosen rate."""
    if not all_rates:
        if rate is None and runs:
            rate = runs[-1]["params"].get("rate")
        runs = [r for r in runs if r["params"].get("rate") == rate]
    latest = {}
    for run in runs:
        server = run["params"].get("server")
        series = run["transport"]
        if server in OTHER_SERVERS:
            series = f"{server}-sse" if series == "sse" else server
        key = (series, run["params"].get("subscribers"))
        latest[key] = run
    return latest, rate


def fmt(value):
    """Compact tick labels: 1, 10, 100, 1k, 10k, 1M, 0.1."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            v = value / scale
            return f"{v:g}{unit}"
    return f"{value:g}"


def decades(values):
    lo = min(values)
    hi = max(values)
    lo_exp = math.floor(math.log10(lo))
    hi_exp = math.ceil(math.log10(hi))
    if hi_exp == lo_exp:
        hi_exp += 1
    return lo_exp, hi_exp


def esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def marker(kind, x, y, colour):
    r = 4.5
    if kind == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{colour}"/>'
    if kind == "square":
        return (f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" '
                f'fill="{colour}"/>')
    if kind == "triangle":
        points = f"{x:.1f},{y - r - 1:.1f} {x - r - 1:.1f},{y + r:.1f} {x + r + 1:.1f},{y + r:.1f}"
        return f'<polygon points="{points}" fill="{colour}"/>'
    points = f"{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y:.1f} {x:.1f},{y + r + 1:.1f} {x - r - 1:.1f},{y:.1f}"
    return f'<polygon points="{points}" fill="{colour}"/>'


def panel(out, left, key, title, unit, latest, xs):
    """One log-log panel: grid, axes, a polyline and markers per transport."""
    series = {}
    for (transport, subscribers), run in latest.items():
        value = run["results"].get(key)
        if subscribers and value is not None and value > 0:
            series.setdefault(transport, []).append((subscribers, value))
    ys = [v for points in series.values() for _, v in points]
    out.append(f'<text x="{left + PANEL_W / 2}" y="{TOP - 14}" class="title">{esc(title)}</text>')
    out.append(f'<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" class="frame"/>')
    if not ys:
        out.append(f'<text x="{left + PANEL_W / 2}" y="{TOP + PANEL_H / 2}" class="empty">no data</text>')
        return
    x_lo, x_hi = decades(xs)
    y_lo, y_hi = decades(ys)

    def px(x):
        return left + (math.log10(x) - x_lo) / (x_hi - x_lo) * PANEL_W

    def py(y):
        return TOP + PANEL_H - (math.log10(y) - y_lo) / (y_hi - y_lo) * PANEL_H

    for exp in range(y_lo, y_hi + 1):
        y = py(10 ** exp)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + PANEL_W}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" class="ytick">{fmt(10 ** exp)}</text>')
        if exp < y_hi:
            for m in range(2, 10):
                y = py(m * 10 ** exp)
                out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + PANEL_W}" y2="{y:.1f}" class="minor"/>')
    for exp in range(x_lo, x_hi + 1):
        x = px(10 ** exp)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + PANEL_H}" class="grid"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + PANEL_H + 18}" class="xtick">{fmt(10 ** exp)}</text>')
    out.append(f'<text x="{left + PANEL_W / 2}" y="{TOP + PANEL_H + 40}" class="label">subscribers on one channel</text>')
    cy = TOP + PANEL_H / 2
    out.append(f'<text x="{left - 62}" y="{cy}" class="label" transform="rotate(-90 {left - 62} {cy})">{esc(unit)}</text>')
    for name, colour, kind, dashes in TRANSPORTS:
        points = sorted(series.get(name, []))
        if not points:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        dash = f' stroke-dasharray="{dashes}"' if dashes else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for x, y in points:
            out.append(marker(kind, px(x), py(y), colour))


def render(latest, rate, all_rates):
    xs = [s for (_, s) in latest if s]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif">',
        "<style>",
        ".title{font-size:15px;font-weight:bold;text-anchor:middle;fill:#222}",
        ".heading{font-size:18px;font-weight:bold;fill:#111}",
        ".sub{font-size:12px;fill:#555}",
        ".frame{fill:none;stroke:#888}",
        ".grid{stroke:#ccc;stroke-width:1}",
        ".minor{stroke:#eee;stroke-width:1}",
        ".xtick{font-size:11px;text-anchor:middle;fill:#444}",
        ".ytick{font-size:11px;text-anchor:end;fill:#444}",
        ".label{font-size:12px;text-anchor:middle;fill:#333}",
        ".legend{font-size:12px;fill:#333}",
        ".empty{font-size:14px;text-anchor:middle;fill:#999}",
        "</style>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        '<text x="20" y="28" class="heading">Cascade fan-out: cost and latency by transport</text>',
    ]
    runs = list(latest.values())
    commits = sorted({r.get("commit", "?") + ("+" if r.get("dirty") else "") for r in runs})
    stamps = sorted(r.get("timestamp", "") for r in runs)
    when = f"{stamps[0][:10]} to {stamps[-1][:10]}" if stamps else "no runs"
    rate_text = "all publish rates" if all_rates else (
        "unpaced publishing" if rate == 0 else f"{fmt(rate)} messages/s")
    machine = runs[0].get("machine", {}) if runs else {}
    loads = [r.get("machine", {}).get("loadavg_1m") for r in runs]
    loads = [l for l in loads if l is not None]
    load_text = f"; load average {min(loads):g} to {max(loads):g}" if loads else ""
    sub = (f"fanout over loopback, {rate_text}; latest run per point; commit {', '.join(commits) or '-'}; "
           f"{when}; gateway on cpu {machine.get('gateway_cpu', '?')} of {machine.get('cpus', '?')}"
           f"{load_text}")
    out.append(f'<text x="20" y="48" class="sub">{esc(sub)}</text>')
    for left, (key, title, unit) in zip(LEFTS, PANELS):
        panel(out, left, key, title, unit, latest, xs or [1, 10])
    # Legend, centred under the panels; each entry is as wide as its name needs.
    shown = {name for name, _ in latest}
    entries = [t for t in TRANSPORTS if t[0] not in OTHER_SERVERS or t[0] in shown]
    names = [OTHER_SERVERS.get(name, name) for name, _, _, _ in entries]
    widths = [30 + 6.2 * len(name) + 22 for name in names]
    x = WIDTH / 2 - sum(widths) / 2
    y = HEIGHT - 22
    for (_, colour, kind, dashes), name, width in zip(entries, names, widths):
        dash = f' stroke-dasharray="{dashes}"' if dashes else ""
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(marker(kind, x + 12, y, colour))
        out.append(f'<text x="{x + 30}" y="{y + 4}" class="legend">{name}</text>')
        x += width
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=ROOT / "benches" / "results.jsonl", type=Path)
    parser.add_argument("--output", default=ROOT / "docs" / "bench.svg", type=Path)
    parser.add_argument("--rate", type=float, help="publish rate to chart (default: the latest run's)")
    parser.add_argument("--all-rates", action="store_true", help="mix runs of every publish rate")
    args = parser.parse_args()
    if not args.input.exists():
        sys.exit(f"{args.input} does not exist: run `cargo bench --bench load -- fanout ...` first")
    latest, rate = select(load(args.input), args.rate, args.all_rates)
    if not latest:
        sys.exit(f"no fanout runs in {args.input} (at rate {rate})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(latest, rate, args.all_rates), encoding="utf-8")
    print(f"wrote {args.output} from {len(latest)} runs")


if __name__ == "__main__":
    main()
