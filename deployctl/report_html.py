"""The release report as one self-contained HTML page: no external assets, no script.

The page carries the same blocks as the Markdown report, every value escaped, and an inline SVG
chart of the gate readings over time: green's and blue's error rate (left axis) and response
time (right axis) per reading, one dot per reading coloured by its verdict, the start of each
cohort step and the decision marked.
"""

from __future__ import annotations

from html import escape
from typing import Any

from deployctl.report_text import Block

WIDTH, HEIGHT = 960, 360
LEFT, RIGHT, TOP, BOTTOM = 64, 64, 54, 42
COLOURS = {"green": "#1a7f37", "blue": "#0550ae", "pass": "#1a7f37", "fail": "#cf222e",
           "inconclusive": "#8c959f"}
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#1f2328}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #d0d7de;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f6f8fa}td.bad{color:#cf222e;font-weight:600}
table.facts th{width:16em}svg{max-width:100%;height:auto;border:1px solid #d0d7de}
svg text{font:11px system-ui,sans-serif}
"""


def _esc(value: Any) -> str:
    return escape(str(value), quote=True)


def _cell(value: Any, tag: str = "td") -> str:
    text = str(value)
    bad = ' class="bad"' if tag == "td" and text in ("failed", "fail") else ""
    return f"<{tag}{bad}>{_esc(text)}</{tag}>"


def page(data: dict[str, Any], report: list[Block]) -> str:
    """The whole page for `data` (a report.build() dict) laid out as `report`'s blocks."""
    rel = data["release"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             # Self-contained, and nothing in it may load or run anything.
             "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
             "style-src 'unsafe-inline'; img-src data:\">",
             "<title>" + _esc(f"Release #{rel['id']} {rel['app']} {rel['version']}: {rel['status']}")
             + "</title>",
             f"<style>{STYLE}</style></head><body>"]
    for kind, body in report:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{_esc(body)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_esc(body)}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_esc(item)}</li>" for item in body) + "</ul>")
        elif kind == "facts":
            parts.append('<table class="facts">' + "".join(
                f"<tr>{_cell(k, 'th')}{_cell(v)}</tr>" for k, v in body) + "</table>")
        elif kind == "table":
            headers, rows = body
            parts.append("<table><thead><tr>" + "".join(_cell(h, "th") for h in headers) + "</tr></thead>"
                         "<tbody>" + "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>"
                                             for row in rows) + "</tbody></table>")
        elif kind == "chart":
            parts.append(chart(data))
    parts.append("</body></html>")
    return "\n".join(parts)


def _num(value: float) -> str:
    return f"{value:.1f}"


def _ceiling(value: float, cap: float | None = None) -> float:
    """A round top for an axis (1, 2 or 5 times a power of ten) above `value`."""
    top = 1e-6
    while top < value:
        for step in (2, 2.5, 2):  # 1 → 2 → 5 → 10
            top *= step
            if top >= value:
                break
    return min(top, cap) if cap is not None else top


def chart(data: dict[str, Any]) -> str:
    """An SVG of the gate readings over the release's time (seconds since it started)."""
    readings = data["readings"]
    cohorts = [s for s in data["steps"] if s["step"].startswith("cohort.") and s["offset_s"] is not None]
    times: list[float] = [r["offset_s"] for r in readings] + [s["offset_s"] for s in cohorts]
    decision = data["decision"]
    failed = next((s for s in cohorts if s["step"] == decision["step"]), None)
    decided: float | None = (failed["offset_s"] + failed["duration_s"]
                             if failed and failed["duration_s"] is not None else None)
    t0, t1 = min(times), max(times if decided is None else [*times, decided])
    t1 += max(t1 - t0, 1.0) * 0.04  # the last reading and the decision stay off the frame
    rates = [r[side]["error_rate"] for r in readings for side in ("green", "blue")
             if r[side] and r[side]["error_rate"] is not None]
    ms = [r[side]["response_ms"] for r in readings for side in ("green", "blue")
          if r[side] and r[side]["response_ms"] is not None]
    limit = ((data.get("gates") or {}).get("error_rate") or {}).get("max")
    rate_max = _ceiling(max([0.01, limit or 0.0, *rates]) * 1.05, cap=1.0)
    ms_max = _ceiling(max([1.0, *ms]) * 1.05)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - t0) / (t1 - t0) * plot_w

    def y(value: float, top: float) -> float:
        return TOP + plot_h - value / top * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
           f'height="{HEIGHT}" role="img" aria-label="gate readings over time">',
           f"<title>Gate readings of release #{_esc(data['release']['id'])}</title>",
           f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#d0d7de"/>']
    for i in range(5):  # gridlines with both axes' values
        frac = i / 4
        gy = _num(TOP + plot_h - frac * plot_h)
        out += [f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{gy}" y2="{gy}" stroke="#eaeef2"/>',
                f'<text x="{LEFT - 6}" y="{gy}" text-anchor="end" dy="4">{frac * rate_max:.1%}</text>',
                f'<text x="{LEFT + plot_w + 6}" y="{gy}" dy="4">{frac * ms_max:.3g} ms</text>']
        tx = t0 + frac * (t1 - t0)
        out.append(f'<text x="{_num(x(tx))}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                   f"+{tx:.1f} s</text>")
    if limit is not None:
        ly = _num(y(limit, rate_max))
        out += [f'<line class="limit" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{ly}" y2="{ly}" '
                f'stroke="{COLOURS["fail"]}" stroke-dasharray="2 3"/>',
                f'<text x="{LEFT + plot_w - 4}" y="{ly}" dy="-4" text-anchor="end" fill="{COLOURS["fail"]}">'
                f"error rate limit {limit:.1%}</text>"]
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">seconds since the '
               "release started</text>")
    for step in cohorts:  # cohort step boundaries
        bx = _num(x(step["offset_s"]))
        size: dict[str, Any] = next((c for c in data["cohorts"] if c["step"] == step["step"]), {})
        out += [f'<line class="boundary" x1="{bx}" x2="{bx}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#57606a" '
                'stroke-dasharray="4 3"/>',
                f'<text x="{bx}" y="{TOP - 6}" dx="3">{_esc(step["step"].removeprefix("cohort."))} '
                f'{_esc(size.get("percent", ""))}%</text>']
    if decided is not None:
        dx = _num(x(decided))
        out += [f'<line class="decision" x1="{dx}" x2="{dx}" y1="{TOP}" y2="{TOP + plot_h}" '
                f'stroke="{COLOURS["fail"]}" stroke-width="2"/>',
                f'<text x="{dx}" y="{TOP + 12}" dx="-4" text-anchor="end" fill="{COLOURS["fail"]}">'
                f"{_esc(decision['kind'])}</text>"]
    for side in ("green", "blue"):
        for field, top, dash in (("error_rate", rate_max, ""),
                                 ("response_ms", ms_max, ' stroke-dasharray="6 4"')):
            points = " ".join(f"{_num(x(r['offset_s']))},{_num(y(r[side][field], top))}" for r in readings
                              if r[side] and r[side][field] is not None)
            if points:
                out.append(f'<polyline class="{side}-{field}" fill="none" stroke="{COLOURS[side]}" '
                           f'stroke-width="1.5"{dash} points="{points}"/>')
    for r in readings:  # one dot per reading, on green's error rate (0 when it could not be measured)
        green, blue = r["green"] or {}, r["blue"] or {}
        tip = (f"#{r['n']} +{r['offset_s']:.1f} s, cohort {r['cohort']}: {r['status']}; green "
               f"{green.get('errors', '-')}/{green.get('requests', '-')} errors, "
               f"{green.get('response_ms', '-')} ms; blue {blue.get('errors', '-')}/"
               f"{blue.get('requests', '-')} errors, {blue.get('response_ms', '-')} ms")
        rate = green.get("error_rate") or 0.0
        colour = COLOURS.get(str(r["status"]), COLOURS["inconclusive"])
        out.append(f'<circle class="reading" data-status="{_esc(r["status"])}" '
                   f'cx="{_num(x(r["offset_s"]))}" cy="{_num(y(rate, rate_max))}" r="4" fill="{colour}">'
                   f"<title>{_esc(tip)}</title></circle>")
    legend = [("green error rate", COLOURS["green"], ""), ("blue error rate", COLOURS["blue"], ""),
              ("green response time", COLOURS["green"], "6 4"),
              ("blue response time", COLOURS["blue"], "6 4")]
    for i, (label, colour, dash) in enumerate(legend):
        lx = LEFT + i * 170
        out += [f'<line x1="{lx}" x2="{lx + 24}" y1="14" y2="14" stroke="{colour}" stroke-width="2"'
                + (f' stroke-dasharray="{dash}"' if dash else "") + "/>",
                f'<text x="{lx + 30}" y="18">{label}</text>']
    out.append("</svg>")
    return "\n".join(out)
