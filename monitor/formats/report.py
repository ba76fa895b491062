"""The timeline report: one self-contained HTML file (inline CSS, SVG and script; nothing fetched when viewed),
and optionally the same timelines as a PNG image."""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from monitor import __version__
from monitor.domain.documents import format_instant
from monitor.domain.errors import ScenarioError
from monitor.domain.findings import Thresholds, humanize
from monitor.domain.fleet import judge
from monitor.domain.model import Scenario
from monitor.domain.prediction import Status, predict_scenario
from monitor.domain.timeline import FleetTimeline, NamespaceTimeline, fleet_timeline
from monitor.formats.render import failover_words, geo_dr_document

# The timeline's geometry, in SVG user units (the drawing scales with the page).
WIDTH = 1000
LABEL_WIDTH = 230
PLOT_START = LABEL_WIDTH + 10
PLOT_END = WIDTH - 20
AXIS_HEIGHT = 26
LANE_HEIGHT = 24
LANE_GAP = 6
# PNG: beyond this many namespaces (most urgent first) the image says how many it left out.
PNG_NAMESPACES = 25


def build_timeline(scenario: Scenario, thresholds: Thresholds) -> FleetTimeline:
    """Predict and judge `scenario`, then lay out every namespace's timeline (most urgent first)."""
    world, predictions = predict_scenario(scenario)
    return fleet_timeline(scenario, world, judge(scenario, world, predictions, thresholds))


@dataclass(frozen=True, slots=True)
class _Scale:
    start: datetime
    end: datetime

    def x(self, t: datetime) -> float:
        span = (self.end - self.start).total_seconds()
        offset = (min(max(t, self.start), self.end) - self.start).total_seconds()
        return PLOT_START + (PLOT_END - PLOT_START) * offset / span

    def width(self, start: datetime, end: datetime) -> float:
        return max(self.x(end) - self.x(start), 2.0)  # a five-minute gap in a year still shows


_TICK_STEPS = (
    (timedelta(minutes=5), "%H:%M"),
    (timedelta(minutes=15), "%H:%M"),
    (timedelta(hours=1), "%H:%M"),
    (timedelta(hours=3), "%d %b %H:%M"),
    (timedelta(hours=6), "%d %b %H:%M"),
    (timedelta(hours=12), "%d %b %H:%M"),
    (timedelta(days=1), "%d %b"),
    (timedelta(days=2), "%d %b"),
    (timedelta(days=7), "%d %b"),
    (timedelta(days=14), "%d %b"),
)


def ticks(start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    """Round instants for the time axis: months, weeks, days or hours, whichever gives at most 13."""
    span = end - start
    if span > timedelta(days=120):
        step_months = max(1, math.ceil(span.days / 30.4 / 12))
        t = datetime(start.year, start.month, 1, tzinfo=start.tzinfo)
        found: list[tuple[datetime, str]] = []
        while t <= end:
            if t >= start:
                new_year = not found or found[-1][0].year != t.year
                found.append((t, t.strftime("%b %Y") if new_year else t.strftime("%b")))
            month = t.month - 1 + step_months
            t = t.replace(year=t.year + month // 12, month=month % 12 + 1)
        return found
    # The finest step that gives at most 13 ticks.
    chosen, fmt = next(((step, fmt) for step, fmt in _TICK_STEPS if span / step <= 13), _TICK_STEPS[-1])
    first = datetime(start.year, start.month, start.day, tzinfo=start.tzinfo)
    while first < start:
        first += chosen
    found = []
    t = first
    while t <= end and len(found) < 14:
        found.append((t, t.strftime(fmt)))
        t += chosen
    return found


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _when(t: datetime | None, now: datetime) -> str:
    if t is None:
        return "—"
    return f"{format_instant(t)} ({humanize(t - now)})"


def _reasons(reasons: tuple[str, ...], unknown: bool) -> str:
    if unknown:
        return "not seen by the monitor"
    return ", ".join(reasons) or "not usable"


def _svg(timeline: NamespaceTimeline, scale: _Scale, now: datetime) -> str:
    prediction = timeline.report.prediction
    lanes = timeline.lanes
    rows = len(lanes) + 1  # the keys, then the namespace itself
    height = AXIS_HEIGHT + rows * (LANE_HEIGHT + LANE_GAP) + 8
    parts = [
        f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="timeline of {_e(timeline.namespace.name)}">'
    ]
    for t, label in ticks(scale.start, scale.end):
        x = scale.x(t)
        parts.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{AXIS_HEIGHT - 6}" y2="{height - 4}"/>')
        parts.append(f'<text class="tick-label" x="{x:.1f}" y="{AXIS_HEIGHT - 10}">{_e(label)}</text>')
    for index, lane in enumerate(lanes):
        y = AXIS_HEIGHT + index * (LANE_HEIGHT + LANE_GAP)
        parts.append(
            f'<text class="lane-label" x="{LABEL_WIDTH}" y="{y + LANE_HEIGHT / 2 + 4}">'
            f"<title>{_e(lane.key)}{' version ' + _e(lane.version) if lane.version else ''}</title>"
            f"{_e(lane.label)}</text>"
        )
        track_width = PLOT_END - PLOT_START
        parts.append(f'<rect class="track" x="{PLOT_START}" y="{y}" width="{track_width}" height="{LANE_HEIGHT}"/>')
        for start, end in lane.usable:
            parts.append(
                f'<rect class="usable" x="{scale.x(start):.1f}" y="{y}" width="{scale.width(start, end):.1f}" '
                f'height="{LANE_HEIGHT}"><title>usable {_e(format_instant(start))} to {_e(format_instant(end))}'
                "</title></rect>"
            )
        for gap in lane.gaps:
            kind = "unseen" if gap.unknown else "unusable"
            parts.append(
                f'<rect class="{kind}" x="{scale.x(gap.start):.1f}" y="{y}" '
                f'width="{scale.width(gap.start, gap.end):.1f}" height="{LANE_HEIGHT}"><title>'
                f"{_e(_reasons(gap.reasons, gap.unknown))} from {_e(format_instant(gap.start))}"
                f"{' to ' + _e(format_instant(gap.end)) if gap.end < scale.end else ''}</title></rect>"
            )
    y = AXIS_HEIGHT + len(lanes) * (LANE_HEIGHT + LANE_GAP)
    parts.append(
        f'<text class="lane-label namespace-lane" x="{LABEL_WIDTH}" y="{y + LANE_HEIGHT / 2 + 4}">namespace</text>'
    )
    if prediction.blind:
        parts.append(
            f'<rect class="unseen" x="{PLOT_START}" y="{y}" width="{PLOT_END - PLOT_START}" '
            f'height="{LANE_HEIGHT}"><title>unknown: the monitor could not see every key</title></rect>'
        )
    else:
        parts.append(
            f'<rect class="alive" x="{PLOT_START}" y="{y}" width="{PLOT_END - PLOT_START}" height="{LANE_HEIGHT}"/>'
        )
        for stretch in prediction.stretches:
            kind = "revoked" if stretch.certain else "at-risk"
            words = (
                "Revoked: no listed key usable"
                if stretch.certain
                else "no listed key usable for under 5 minutes: revoked only if a poll lands in it"
            )
            parts.append(
                f'<rect class="{kind}" x="{scale.x(stretch.start):.1f}" y="{y}" '
                f'width="{scale.width(stretch.start, stretch.end):.1f}" height="{LANE_HEIGHT}"><title>{words} '
                f"from {_e(format_instant(stretch.start))}"
                f"{'' if stretch.open_ended else ' to ' + _e(format_instant(stretch.end))}</title></rect>"
            )
        if prediction.revoked_by is not None:
            x = scale.x(prediction.revoked_by)
            parts.append(
                f'<path class="revoked-by" d="M{x:.1f},{y - 3} l-5,-7 h10 z"><title>revoked by '
                f"{_e(format_instant(prediction.revoked_by))}: a poll has landed by then</title></path>"
            )
    for number, mark in enumerate(timeline.changes, start=1):
        x = scale.x(mark.at)
        parts.append(f'<line class="change" x1="{x:.1f}" x2="{x:.1f}" y1="{AXIS_HEIGHT - 4}" y2="{height - 4}"/>')
        parts.append(
            f'<g class="change-mark"><circle cx="{x:.1f}" cy="{AXIS_HEIGHT - 2}" r="7"/>'
            f'<text x="{x:.1f}" y="{AXIS_HEIGHT + 1.5}">{number}</text>'
            f"<title>{_e(format_instant(mark.at))}: {_e(mark.text)}</title></g>"
        )
    parts.append(f'<line class="now" x1="{PLOT_START}" x2="{PLOT_START}" y1="{AXIS_HEIGHT - 6}" y2="{height - 4}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _window(timeline: NamespaceTimeline, now: datetime) -> str:
    prediction = timeline.report.prediction
    if prediction.blind:
        return "no prediction: the monitor could not see every listed key"
    if prediction.status_now is Status.REVOKED:
        return "no listed key is usable now"
    earliest = prediction.revoked_at_earliest
    if earliest is None:
        return f"none before {format_instant(prediction.horizon)}"
    by = prediction.revoked_by
    window = f"from {_when(earliest, now)}"
    if by is not None:
        window += f", certainly by {format_instant(by)}"
    else:
        window += " (possible only: every gap is under 5 minutes)"
    return window


def _findings_table(timeline: NamespaceTimeline) -> str:
    findings = sorted(timeline.report.findings, key=lambda f: -f.severity.value)
    if not findings:
        return '<p class="no-findings">No findings.</p>'
    rows = "".join(
        f'<tr class="sev-{_e(f.severity.label)}"><td><span class="sev">{_e(f.severity.label)}</span></td>'
        f"<td><code>{_e(f.code.value)}</code></td><td>{_e(f.key or '—')}</td>"
        f"<td>{_remedy(f.message)}</td></tr>"
        for f in findings
    )
    return (
        '<table class="findings"><thead><tr><th>severity</th><th>finding</th><th>key</th>'
        f"<th>what and what to do</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _remedy(message: str) -> str:
    """The message, its `az …` command set apart so it can be copied whole."""
    head, marker, command = message.partition(": az ")
    if not marker:
        return _e(message)
    return f'{_e(head)}:<br><code class="command">az {_e(command)}</code>'


def _namespace(timeline: NamespaceTimeline, scale: _Scale, now: datetime, index: int) -> str:
    prediction = timeline.report.prediction
    namespace = timeline.namespace
    status = prediction.status_now.value
    changes = "".join(f"<li><time>{_e(format_instant(m.at))}</time> {_e(m.text)}</li>" for m in timeline.changes)
    changes_block = f'<ol class="changes">{changes}</ol>' if changes else ""
    return (
        f'<article class="namespace status-{status}" id="ns-{index}" data-namespace="{_e(namespace.name)}" '
        f'data-status="{status}" data-kind="{namespace.kind.value}">'
        f'<h2><span class="name">{_e(namespace.name)}</span> <span class="kind">{_e(namespace.kind.service)}</span> '
        f'<span class="badge {status}">{status}</span></h2>'
        f'<p class="meta"><span class="id">{_e(namespace.id)}</span><br>'
        f"{prediction.usable_keys_now} of {prediction.keys_total} listed keys usable now · predicted revocation: "
        f"{_e(_window(timeline, now))}{_observed(timeline, now)}{_pairing(timeline)}"
        f"{' · infrastructure (double) encryption' if namespace.infrastructure_encryption else ''}</p>"
        f"{_svg(timeline, scale, now)}{changes_block}{_findings_table(timeline)}</article>"
    )


def _observed(timeline: NamespaceTimeline, now: datetime) -> str:
    """What the service's own key accesses showed: its next poll, once its phase is known, or why not."""
    namespace = timeline.namespace
    observation = timeline.report.prediction.observation
    if observation is None:
        return ""
    service = namespace.kind.service
    if not observation.known:
        why = observation.unobserved or "unknown"
        return f'<br><span class="observed unknown">{_e(service)}\'s own key accesses: unknown ({_e(why)})</span>'
    phase = observation.phase
    if phase is None or not phase.known:
        seen = observation.polls_seen
        return f'<br><span class="observed">{_e(service)}\'s poll phase: not known yet ({seen} poll(s) seen)</span>'
    revoked = timeline.report.prediction.revoked_at
    next_poll = format_instant(phase.next_poll(now))
    text = f"{service}'s next poll at {next_poll} (its phase, from {phase.polls} polls in the audit log)"
    if revoked is not None:
        text += f"; the poll at {format_instant(revoked)} revokes it"
    return f'<br><span class="observed" data-next-poll="{_e(next_poll)}">{_e(text)}</span>'


def _pairing(timeline: NamespaceTimeline) -> str:
    if timeline.namespace.geo_dr is None:
        return ""
    pair = geo_dr_document(timeline.report)
    outcome = failover_words(pair)
    tone = " risk" if pair["failover"] in {"would-revoke-partner", "unknown"} else ""
    return (
        f'<br><span class="geo-dr{tone}" data-failover="{_e(pair["failover"])}">Geo-DR {_e(pair["role"])} of alias '
        f"{_e(pair['alias'])}, paired with {_e(pair['partner_name'])}: {_e(outcome)}</span>"
    )


def _overview(fleet: FleetTimeline) -> str:
    rows = []
    for index, timeline in enumerate(fleet.namespaces):
        prediction = timeline.report.prediction
        worst = timeline.report.worst
        status = prediction.status_now.value
        rows.append(
            f'<tr data-status="{status}"><td><a href="#ns-{index}">{_e(timeline.namespace.name)}</a></td>'
            f'<td><span class="badge {status}">{status}</span></td>'
            f"<td>{prediction.usable_keys_now} / {prediction.keys_total}</td>"
            f"<td>{_e(_when(prediction.revoked_at_earliest, fleet.now))}</td>"
            f"<td>{_e(format_instant(prediction.revoked_by) if prediction.revoked_by else '—')}</td>"
            f"<td>{_e(worst.label if worst else '—')}</td></tr>"
        )
    return (
        '<table class="overview"><thead><tr><th>namespace</th><th>status</th><th>usable / listed</th>'
        "<th>revoked at earliest</th><th>revoked by</th><th>worst finding</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


_STYLE = """
:root { --usable:#2e8b57; --unusable:#e8a0a0; --unseen:#b8b8b8; --revoked:#b22222; --at-risk:#f0a030;
  --ink:#1d2430; --muted:#5b6675; --line:#d7dce3; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
  margin: 0 auto; padding: 24px; max-width: 1120px; background: #fafbfc; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 0 0 4px; }
.sub, .meta { color: var(--muted); margin: 0 0 10px; } .id { font-family: ui-monospace, monospace; font-size: 12px; }
.geo-dr.risk { color: var(--revoked); font-weight: 600; }
.kind { color: var(--muted); font-size: 12px; font-weight: 400; }
.summary { display: flex; gap: 10px; list-style: none; padding: 0; margin: 12px 0; flex-wrap: wrap; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
  color: #fff; vertical-align: middle; }
.badge.healthy { background: var(--usable); } .badge.degraded { background: #c97a00; }
.badge.revoked { background: var(--revoked); } .badge.unknown { background: #6b7280; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 4px; background: #fff; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
article.namespace { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px;
  margin: 18px 0; } article.status-revoked { border-left: 5px solid var(--revoked); }
article.status-unknown { border-left: 5px solid #6b7280; } article.status-degraded { border-left: 5px solid #c97a00; }
svg.timeline { width: 100%; height: auto; display: block; }
.track { fill: #f1f3f5; } .usable { fill: var(--usable); } .unusable { fill: var(--unusable); }
.unseen { fill: var(--unseen); } .alive { fill: #e6f2ea; }
.revoked { fill: var(--revoked); } .at-risk { fill: var(--at-risk); } .revoked-by { fill: var(--revoked); }
.tick { stroke: var(--line); stroke-width: 1; }
.tick-label { font-size: 11px; fill: var(--muted); text-anchor: middle; }
.lane-label { font-size: 12px; text-anchor: end; fill: var(--ink); } .namespace-lane { font-weight: 600; }
.now { stroke: var(--ink); stroke-width: 2; }
.change { stroke: #3b5bdb; stroke-width: 1.2; stroke-dasharray: 3 3; }
.change-mark circle { fill: #3b5bdb; } .change-mark text { fill: #fff; font-size: 10px; text-anchor: middle;
  font-weight: 700; }
ol.changes { margin: 6px 0; padding-left: 22px; } ol.changes time { font-family: ui-monospace, monospace;
  font-size: 12px; color: var(--muted); margin-right: 6px; }
.sev { font-weight: 600; } tr.sev-critical .sev { color: var(--revoked); } tr.sev-warning .sev { color: #c97a00; }
tr.sev-info .sev { color: var(--muted); }
code.command { display: inline-block; margin-top: 2px; padding: 2px 6px; background: #f1f3f5; border-radius: 4px;
  font-size: 12px; white-space: pre-wrap; word-break: break-all; }
.legend { display: flex; gap: 16px; flex-wrap: wrap; color: var(--muted); font-size: 12px; margin: 8px 0; }
.legend i { display: inline-block; width: 14px; height: 10px; margin-right: 5px; vertical-align: middle; }
.controls { display: flex; gap: 12px; align-items: center; margin: 10px 0; flex-wrap: wrap; }
.controls input[type=search] { padding: 5px 8px; border: 1px solid var(--line); border-radius: 6px; width: 260px; }
.hidden { display: none; } .blind-list { color: var(--revoked); }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; }
"""

# Filtering by name and status: plain DOM, no library, nothing fetched.
_SCRIPT = """
(function () {
  const query = document.getElementById("filter");
  const boxes = Array.from(document.querySelectorAll("input[data-status-filter]"));
  const shown = document.getElementById("shown");
  function apply() {
    const text = query.value.trim().toLowerCase();
    const statuses = new Set(boxes.filter(b => b.checked).map(b => b.dataset.statusFilter));
    let count = 0;
    document.querySelectorAll("article.namespace").forEach(article => {
      const visible = statuses.has(article.dataset.status) &&
        article.dataset.namespace.toLowerCase().includes(text);
      article.classList.toggle("hidden", !visible);
      if (visible) count += 1;
    });
    document.querySelectorAll("table.overview tbody tr").forEach((row, index) => {
      const article = document.getElementById("ns-" + index);
      row.classList.toggle("hidden", article.classList.contains("hidden"));
    });
    shown.textContent = String(count);
  }
  query.addEventListener("input", apply);
  boxes.forEach(box => box.addEventListener("change", apply));
  apply();
})();
"""


def _shown_note(fleet: FleetTimeline) -> str:
    if fleet.shown_until >= fleet.horizon:
        return ""
    return (
        f'<p class="sub">Timelines are drawn to {_e(format_instant(fleet.shown_until))}: from then to the horizon '
        "nothing in them changes (each bar continues as it ends).</p>"
    )


def render_html(fleet: FleetTimeline, *, source: str, generated: datetime) -> str:
    """The whole report as one HTML document."""
    scale = _Scale(fleet.now, fleet.shown_until)
    counts = Counter(t.report.prediction.status_now.value for t in fleet.namespaces)
    summary = "".join(
        f'<li><span class="badge {status}">{counts.get(status, 0)} {status}</span></li>'
        for status in ("revoked", "unknown", "degraded", "healthy")
    )
    predicted = sum(1 for t in fleet.namespaces if t.report.prediction.revoked_at_earliest is not None)
    filters = "".join(
        f'<label><input type="checkbox" data-status-filter="{status}" checked> {status}</label>'
        for status in ("revoked", "unknown", "degraded", "healthy")
    )
    blind = ""
    if fleet.blind:
        items = "".join(f"<li>{_e(b.scope.value)} {_e(b.target)}: {_e(b.reason)}</li>" for b in fleet.blind)
        blind = f'<section><h2>What the monitor could not see</h2><ul class="blind-list">{items}</ul></section>'
    legend = (
        '<div class="legend"><span><i style="background:var(--usable)"></i>key usable</span>'
        '<span><i style="background:var(--unusable)"></i>key not usable (hover for why)</span>'
        '<span><i style="background:var(--unseen)"></i>not seen by the monitor</span>'
        '<span><i style="background:var(--revoked)"></i>namespace Revoked (no key usable at a poll)</span>'
        '<span><i style="background:var(--at-risk)"></i>gap under 5 min: revoked only if a poll lands in it</span>'
        '<span><i style="background:#3b5bdb"></i>scenario change (numbered below the timeline)</span>'
        '<span><i style="background:var(--ink);width:3px"></i>now</span></div>'
    )
    articles = "".join(_namespace(t, scale, fleet.now, i) for i, t in enumerate(fleet.namespaces))
    title = f"keyhealth timeline — {len(fleet.namespaces)} namespaces"
    metadata = json.dumps(
        {
            "now": format_instant(fleet.now),
            "horizon": format_instant(fleet.horizon),
            "shown_until": format_instant(fleet.shown_until),
            "namespaces": [
                {"name": t.namespace.name, "id": t.namespace.id, "status": t.report.prediction.status_now.value}
                for t in fleet.namespaces
            ],
        }
    ).replace("<", "\\u003c")  # JSON inside a script element: no "</script>" can end it early
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No favicon request: the file must not ask the network for anything.
        f'<link rel="icon" href="data:,"><title>{_e(title)}</title><style>{_STYLE}</style></head><body>'
        f'<header><h1>Customer-managed key timeline</h1><p class="sub">{_e(source)} · judged at '
        f"{_e(format_instant(fleet.now))} · predicted to {_e(format_instant(fleet.horizon))} · "
        f"{len(fleet.namespaces)} namespaces, {predicted} with a predicted revocation</p>{_shown_note(fleet)}"
        f'<ul class="summary">{summary}</ul></header>{blind}'
        f"<section><h2>Namespaces, most urgent first</h2>{_overview(fleet)}</section>"
        f'<div class="controls"><input type="search" id="filter" placeholder="filter by namespace name" '
        f'aria-label="filter by namespace name">{filters}<span><span id="shown">{len(fleet.namespaces)}</span> '
        f"shown</span></div>{legend}{articles}"
        f"<footer>Written by keyhealth {_e(__version__)} at {_e(format_instant(generated))}. Service Bus polls "
        "each listed key every 5 minutes; a namespace goes Revoked at a poll where none is usable.</footer>"
        f'<script type="application/json" id="report-data">{metadata}</script>'
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def render_png(fleet: FleetTimeline, path: Path) -> None:
    """The most urgent namespaces' timelines as one image (matplotlib, no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise ScenarioError("--png", "needs matplotlib: pip install 'keyhealth[report]'") from None

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    day: Callable[[datetime], float] = mdates.date2num  # matplotlib's dates are untyped

    shown = fleet.namespaces[:PNG_NAMESPACES]
    rows = [row for timeline in shown for row in _png_rows(timeline)]
    height = max(2.5, 0.32 * len(rows) + 1.4)
    figure, axes = plt.subplots(figsize=(12, height), dpi=110)
    colours = {
        "usable": "#2e8b57",
        "unusable": "#e8a0a0",
        "unseen": "#b8b8b8",
        "revoked": "#b22222",
        "at-risk": "#f0a030",
        "alive": "#e6f2ea",
    }
    labels = []
    for y, (label, bars, changes) in enumerate(reversed(rows)):
        labels.append(label)
        for kind, start, end in bars:
            width = max(day(end) - day(start), 0.15)
            axes.broken_barh([(day(start), width)], (y - 0.38, 0.76), color=colours[kind])
        for at in changes:
            axes.axvline(day(at), ymin=0, ymax=1, color="#3b5bdb", linewidth=0.6, linestyle=":")
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_ylim(-0.6, len(labels) - 0.4)
    axes.set_xlim(day(fleet.now), day(fleet.shown_until))
    axes.xaxis_date()
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%d %b %Y"))  # type: ignore[no-untyped-call]
    axes.axvline(day(fleet.now), color="#1d2430", linewidth=1.5)
    left_out = len(fleet.namespaces) - len(shown)
    title = f"Customer-managed key timeline, {format_instant(fleet.now)} to {format_instant(fleet.shown_until)}"
    if left_out:
        title += f" — the {len(shown)} most urgent namespaces; {left_out} more in the HTML report"
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", color="#d7dce3", linewidth=0.5)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


_Bars = list[tuple[str, datetime, datetime]]  # (kind, start, end)


def _png_rows(timeline: NamespaceTimeline) -> Iterator[tuple[str, _Bars, list[datetime]]]:
    prediction = timeline.report.prediction
    horizon = prediction.horizon
    changes = [m.at for m in timeline.changes]
    status = prediction.status_now.value
    bars: _Bars = (
        [("unseen", prediction.now, horizon)]
        if prediction.blind
        else [("alive", prediction.now, horizon)]
        + [("revoked" if s.certain else "at-risk", s.start, s.end) for s in prediction.stretches]
    )
    yield f"{timeline.namespace.name} [{status}]", bars, changes
    for lane in timeline.lanes:
        lane_bars = [("usable", start, end) for start, end in lane.usable]
        lane_bars += [("unseen" if g.unknown else "unusable", g.start, g.end) for g in lane.gaps]
        yield f"  {lane.label}", lane_bars, changes
