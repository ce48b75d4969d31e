#!/usr/bin/env python3
"""Draw Grafana dashboards as PNG images that look like Grafana's dark theme, without Grafana.

Usage: python3 tests/dashboards/draw.py DATA_DIR OUT_DIR

DATA_DIR holds classic-model dashboard JSON files whose panel targets carry, next to `expr`
and `legendFormat`, an extra key `series`: the Prometheus query_range result for that
expression ([{"metric": {labels}, "values": [[unix_ts, "value"], ...]}]). For every
DATA_DIR/<name>.json this writes OUT_DIR/<name>.png: the dashboard title, and each panel at
its gridPos (24 columns = 16 inches, one grid row = 0.35 inch) with its title and
  timeseries  one line per series, legend from legendFormat ("{{label}}" substituted, "" means
              the series' labels), y axis in the panel's unit, dashed threshold lines when
              fieldConfig.defaults.custom.thresholdsStyle.mode is "line";
  stat        the last non-NaN value, large, coloured by the thresholds (or a value mapping's
              text and colour), over a faint sparkline;
  heatmap     `sum by (le) (increase(..._bucket[...]))` series (cumulative per `le` bound),
              differenced into per-bucket counts, as a grid over time ("Oranges").
Panels without series show "No data"; other panel types show their type.
"""
import datetime
import json
import math
import pathlib
import re
import sys

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import FancyBboxPatch
    from matplotlib.ticker import FuncFormatter, MaxNLocator
except ImportError:
    sys.exit("draw.py needs matplotlib: python3 -m pip install matplotlib")

COL_IN, ROW_IN, HEADER_IN, GAP_IN = 16 / 24, 0.35, 0.55, 0.06
BG, PANEL_BG, BORDER, TEXT, DIM, GRID = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e9a", "#26292e"
PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9",
           "#705DA0", "#37872D", "#FADE2A", "#447EBC", "#C15C17", "#890F02", "#0A437C"]
NAMED = {"green": "#73BF69", "red": "#F2495C", "yellow": "#FADE2A", "orange": "#FF9830",
         "blue": "#5794F2", "purple": "#B877D9", "text": TEXT, "transparent": "#00000000",
         "dark-green": "#37872D", "dark-red": "#C4162A", "dark-yellow": "#E0B400",
         "dark-orange": "#FA6400", "dark-blue": "#1F60C4", "dark-purple": "#8F3BB8",
         "semi-dark-green": "#56A64B", "semi-dark-red": "#E02F44", "semi-dark-yellow": "#F2CC0C",
         "semi-dark-orange": "#FF780A", "semi-dark-blue": "#3274D9", "light-green": "#96D98D",
         "light-red": "#FF7383", "light-yellow": "#FFEE52", "light-orange": "#FFB357",
         "light-blue": "#8AB8FF"}
LOCAL_TZ = datetime.datetime.now().astimezone().tzinfo


def color(name):
    return NAMED.get(name, name) if name else TEXT


def number(v, decimals=None):
    if decimals is None:
        decimals = 0 if abs(v) >= 100 or v == int(v) else 1 if abs(v) >= 10 else 2
    s = f"{v:.{decimals}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def scaled(v, steps, base_unit):
    """v in the largest of steps [(factor, suffix)] that keeps it >= 1, e.g. 0.005 s -> 5 ms."""
    for factor, suffix in steps:
        if abs(v) >= factor:
            return f"{number(v / factor)} {suffix}"
    return f"{number(v)} {base_unit}" if v == 0 else f"{number(v / steps[-1][0])} {steps[-1][1]}"


def fmt(v, unit):
    """A value as Grafana shows it for the unit."""
    if v is None or math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if unit == "percentunit":
        return f"{number(v * 100)}%"
    if unit == "percent":
        return f"{number(v)}%"
    if unit == "s":
        return scaled(v, [(3600, "h"), (60, "min"), (1, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")], "s")
    if unit == "ms":
        return fmt(v / 1000, "s")
    if unit == "bytes":
        return scaled(v, [(1024 ** 4, "TiB"), (1024 ** 3, "GiB"), (1024 ** 2, "MiB"), (1024, "KiB"), (1, "B")], "B")
    short = number(v)
    for factor, suffix in [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")]:
        if abs(v) >= factor:
            short = number(v / factor) + suffix
            break
    return f"{short} req/s" if unit == "reqps" else f"{short} ops/s" if unit == "ops" else short


def legend(fmt_str, metric, expr):
    if fmt_str:
        return re.sub(r"\{\{\s*([\w.]+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt_str)
    if not metric:
        return expr  # Grafana names a label-less series after its query
    labels = ", ".join(f'{k}="{v}"' for k, v in metric.items() if k != "__name__")
    return f"{metric.get('__name__', '')}{{{labels}}}" if labels or "__name__" not in metric else metric["__name__"]


def series_of(panel):
    """[(legend label, metric, [datetime], np.array of floats)] for all targets of the panel."""
    out = []
    for t in panel.get("targets", []):
        for s in t.get("series") or []:
            ts = [datetime.datetime.fromtimestamp(float(x), LOCAL_TZ) for x, _ in s["values"]]
            out.append((legend(t.get("legendFormat", ""), s["metric"], t.get("expr", "")), s["metric"], ts,
                        np.array([float(v) for _, v in s["values"]])))
    return out


def threshold_color(v, defaults):
    steps = defaults.get("thresholds", {}).get("steps") or [{"color": "green", "value": None}]
    c = steps[0]["color"]
    for step in steps:
        if step.get("value") is None or v >= step["value"]:
            c = step["color"]
    return color(c)


def mapped(v, defaults):
    """(text, colour or None) of the first value mapping matching v, else None."""
    for m in defaults.get("mappings") or []:
        opts = m.get("options", {})
        if m.get("type") == "value":
            for key, res in opts.items():
                try:
                    hit = float(key) == v
                except ValueError:
                    hit = key == str(v)
                if hit:
                    return res.get("text", fmt(v, defaults.get("unit"))), res.get("color")
        elif m.get("type") == "range":
            lo, hi = opts.get("from"), opts.get("to")
            if (lo is None or v >= lo) and (hi is None or v <= hi):
                return opts["result"].get("text", fmt(v, defaults.get("unit"))), opts["result"].get("color")
    return None


def style(ax, unit, xlim):
    ax.set_facecolor(PANEL_BG)
    for side, spine in ax.spines.items():
        spine.set_visible(side == "bottom")
        spine.set_color(BORDER)
    ax.tick_params(colors=DIM, labelsize=7, length=0, pad=3)
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=7, tz=LOCAL_TZ))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=LOCAL_TZ))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, unit)))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlim(*xlim)


def draw_timeseries(fig, box, panel, series, xlim):
    d = panel.get("fieldConfig", {}).get("defaults", {})
    x, y, w, h = box
    labels = [s[0] for s in series]
    entry_in = 0.3 + 0.055 * max(map(len, labels))
    ncol = max(1, int((w - 0.2) / entry_in))
    rows = min(3, math.ceil(len(labels) / ncol))
    legend_in = 0.15 * rows + 0.05
    ax = fig.add_axes(inches(fig, x + 0.65, y + 0.38, w - 0.8, h - 0.73 - legend_in))
    style(ax, d.get("unit"), xlim)
    for i, (label, _, ts, vals) in enumerate(series):
        ax.plot(ts, np.where(np.isinf(vals), np.nan, vals), color=PALETTE[i % len(PALETTE)],
                linewidth=1.2, label=label)
    mode = d.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off")
    for step in d.get("thresholds", {}).get("steps", []):
        if step.get("value") is not None and "line" in mode:
            ax.axhline(step["value"], color=color(step["color"]), linestyle="--", linewidth=1)
    if d.get("min") is not None:
        ax.set_ylim(bottom=d["min"])
    if d.get("max") is not None:
        ax.set_ylim(top=d["max"])
    if d.get("unit") == "bytes":  # ticks at round KiB/MiB/GiB, not round decimal byte counts
        lo, hi = ax.get_ylim()
        f = 1024 ** max(0, int(math.log(max(abs(lo), abs(hi), 1), 1024)))
        ax.set_yticks([t * f for t in MaxNLocator(5).tick_values(lo / f, hi / f) if lo <= t * f <= hi])
    handles = ax.get_lines()[:len(labels)][:ncol * rows]
    fig.legend(handles, [l.get_label() for l in handles], ncol=ncol, frameon=False, fontsize=7,
               labelcolor=TEXT, loc="lower left", handlelength=1.2, columnspacing=1.2,
               bbox_to_anchor=inches(fig, x + 0.1, y + h - 0.04, 0, 0)[:2])


def draw_stat(fig, box, panel, series):
    d = panel.get("fieldConfig", {}).get("defaults", {})
    x, y, w, h = box
    cell_w = w / len(series)
    for i, (label, _, ts, vals) in enumerate(series):
        finite = vals[~np.isnan(vals)]
        if not len(finite):
            continue
        v = float(finite[-1])
        text, c = fmt(v, d.get("unit")), threshold_color(v, d)
        m = mapped(v, d)
        if m:
            text, c = m[0], color(m[1]) if m[1] else c
        left, width = x + i * cell_w + 0.05, cell_w - 0.1
        if panel.get("options", {}).get("graphMode", "area") == "area" and len(finite) > 1:
            spark = fig.add_axes(inches(fig, left, y + h - 0.05 - (h - 0.4) * 0.4, width, (h - 0.4) * 0.4))
            spark.set_axis_off()
            spark.fill_between(ts, np.where(np.isfinite(vals), vals, np.nan), min(finite), color=c, alpha=0.18, linewidth=0)
            spark.plot(ts, np.where(np.isfinite(vals), vals, np.nan), color=c, linewidth=1, alpha=0.6)
        ax = fig.add_axes(inches(fig, left, y + 0.35, width, h - 0.4))
        ax.set_axis_off()
        size = min(44, 72 * (h - 0.4) * 0.45, 72 * (cell_w - 0.2) / (0.72 * max(len(text), 1)))
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=size, color=c, fontweight="bold")
        if len(series) > 1:
            ax.text(0.5, 0.92, label, ha="center", va="top", fontsize=7, color=TEXT)


def draw_heatmap(fig, box, panel, series, xlim):
    d = panel.get("fieldConfig", {}).get("defaults", {})
    unit = panel.get("options", {}).get("yAxis", {}).get("unit") or d.get("unit")
    buckets = sorted((float(m.get("le", "+Inf")), dict(zip(ts, vals))) for _, m, ts, vals in series)
    times = sorted({t for _, by_t in buckets for t in by_t})
    cum = np.array([[by_t.get(t, np.nan) for t in times] for _, by_t in buckets])
    counts = np.clip(np.diff(cum, axis=0, prepend=0), 0, None)  # cumulative per le -> per bucket
    x, y, w, h = box
    ax = fig.add_axes(inches(fig, x + 0.65, y + 0.3, w - 0.8, h - 0.65))
    style(ax, None, xlim)
    ax.grid(False)
    num = mdates.date2num(times)
    half = (num[1] - num[0]) / 2 if len(num) > 1 else 1 / 86400
    edges = np.concatenate([num - half, [num[-1] + half]])
    ax.pcolormesh(edges, np.arange(len(buckets) + 1), np.ma.masked_where(~(counts > 0), counts),
                  cmap="Oranges_r", shading="flat")  # dark theme: few = dark, many = bright
    every = max(1, math.ceil(len(buckets) / max(1, int((h - 0.65) / 0.16))))
    ticks = list(range(0, len(buckets) + 1, every))
    ax.set_yticks(ticks, ["0" if i == 0 else fmt(buckets[i - 1][0], unit) for i in ticks])


def inches(fig, x, y, w, h):
    """Figure-relative [left, bottom, width, height] of a box given in inches from the top left."""
    fw, fh = fig.get_size_inches()
    return [x / fw, 1 - (y + h) / fh, w / fw, h / fh] if h else [x / fw, 1 - y / fh, 0, 0]


def draw(dash, out):
    panels = [p for p in dash.get("panels", []) if "gridPos" in p]
    rows = max([p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels] or [1])
    fig = plt.figure(figsize=(24 * COL_IN, HEADER_IN + rows * ROW_IN), facecolor=BG)
    fig.text(0.1 / fig.get_size_inches()[0], 1 - 0.3 / fig.get_size_inches()[1], dash.get("title", ""),
             color=TEXT, fontsize=14, va="center")
    all_series = {id(p): series_of(p) for p in panels}
    stamps = [t for ss in all_series.values() for s in ss for t in s[2]]
    xlim = (min(stamps), max(stamps)) if stamps else (None, None)
    for p in panels:
        g = p["gridPos"]
        box = (g["x"] * COL_IN + GAP_IN / 2, HEADER_IN + g["y"] * ROW_IN + GAP_IN / 2,
               g["w"] * COL_IN - GAP_IN, g["h"] * ROW_IN - GAP_IN)
        x, y, w, h = box
        if p.get("type") == "row":
            fig.text(*inches(fig, x + 0.05, y + h / 2, 0, 0)[:2], p.get("title", ""), color=TEXT,
                     fontsize=10, fontweight="bold", va="center")
            continue
        frame = fig.add_axes(inches(fig, *box))
        frame.set_axis_off()
        frame.add_patch(FancyBboxPatch((0, 0), 1, 1, boxstyle="round,pad=0,rounding_size=0.01",
                                       facecolor=PANEL_BG, edgecolor=BORDER, linewidth=0.8,
                                       transform=frame.transAxes, mutation_aspect=w / h))
        frame.text(0.1 / w, 1 - 0.17 / h, p.get("title", ""), color=TEXT, fontsize=8.5,
                   fontweight="bold", va="center", transform=frame.transAxes)
        series = all_series[id(p)]
        kind = p.get("type")
        if kind in ("timeseries", "stat", "heatmap") and all(np.isnan(s[3]).all() for s in series):
            frame.text(0.5, 0.45, "No data", ha="center", va="center", color=DIM, fontsize=11)
        elif kind == "timeseries":
            draw_timeseries(fig, box, p, series, xlim)
        elif kind == "stat":
            draw_stat(fig, box, p, series)
        elif kind == "heatmap":
            draw_heatmap(fig, box, p, series, xlim)
        else:
            frame.text(0.5, 0.45, f"[{kind} panel]", ha="center", va="center", color=DIM, fontsize=9)
    fig.savefig(out, dpi=100, facecolor=BG)
    plt.close(fig)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    data, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(data.glob("*.json"))
    if not files:
        sys.exit(f"draw.py: no dashboard JSON files in {data}")
    for f in files:
        draw(json.loads(f.read_text()), out / f"{f.stem}.png")
        print(f"wrote {out / (f.stem + '.png')}")


if __name__ == "__main__":
    main()
