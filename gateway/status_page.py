"""The HTML status page served at ``GET /``: one self-contained document, no scripts, no assets.

Rendered on the server from the /status document so it works in any browser, over an SSH
tunnel, with JavaScript off. A coloured banner answers "is it working?"; tables below say what
each route and adapter is doing. Every value is HTML-escaped (route names, errors and URLs come
from configuration and the network).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape

from gateway.status_format import format_ago, format_duration, format_since, format_value

# The page reloads itself this often (seconds): fresh enough to watch a delivery happen, rare
# enough to cost nothing.
REFRESH_SECONDS = 10

_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{padding:18px 28px;color:#fff}
header.ok{background:#1e7d3a}header.bad{background:#b3261e}
header h1{margin:0;font-size:26px}header p{margin:4px 0 0;font-size:17px}
main{padding:8px 28px 28px}
h2{font-size:17px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;min-width:50%;box-shadow:0 1px 2px #0002}
th,td{padding:6px 12px;text-align:left;border-bottom:1px solid #e3e5ea;vertical-align:top}
th{background:#e8eaf0;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.pill{display:inline-block;padding:1px 9px;border-radius:10px;color:#fff;font-size:13px}
.pill.ok{background:#1e7d3a}.pill.bad{background:#b3261e}.pill.warn{background:#a56a00}
.facts td:first-child{color:#596175}
.url{font-family:ui-monospace,monospace;font-size:13px;word-break:break-all}
"""


def _dicts(value: object) -> list[dict[str, object]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def _cell(value: object, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<td{cls}>{escape(format_value(value))}</td>"


def _badge(ok: bool, text: str, warn: bool = False) -> str:
    css = "ok" if ok else ("warn" if warn else "bad")
    return f'<span class="pill {css}">{escape(text)}</span>'


def _pill(ok: bool, text: str, warn: bool = False) -> str:
    return f"<td>{_badge(ok, text, warn)}</td>"


def _table(headings: Sequence[str], rows: Iterable[str], empty: str) -> str:
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    if not body:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    return f"<table><tr>{head}</tr>{body}</table>"


def _facts(document: dict[str, object], now: float) -> str:
    upstream = document.get("upstream")
    up = upstream if isinstance(upstream, dict) else {}
    state = str(up.get("state", "unknown"))
    rows = [
        "<td>Push service</td>" + f'<td class="url">{escape(str(up.get("service", "-")))}</td>',
        "<td>Connection</td><td>"
        + _badge(state == "connected", state, warn=state == "connecting")
        + f" {escape(format_since(up.get('since'), now))}</td>",
        "<td>Version</td>" + _cell(document.get("version")),
        "<td>Uptime</td>" + _cell(format_duration(document.get("uptime"))),
    ]
    return '<table class="facts">' + "".join(f"<tr>{r}</tr>" for r in rows) + "</table>"


def _routes(document: dict[str, object], now: float) -> str:
    rows = []
    for route in _dicts(document.get("routes")):
        error = route.get("last_error")
        rows.append(
            _cell(route.get("name"))
            + _cell(route.get("queue_depth"), "num")
            + _cell(format_ago(route.get("last_message"), now))
            + _cell(format_ago(route.get("last_delivery"), now))
            + _cell(format_duration(route.get("subscription_age")))
            + (_cell(error) if error else "<td>-</td>")
            + f'<td class="url">{escape(format_value(route.get("push_resource_id")))}</td>'
        )
    headings = ("Route", "Queued", "Last message", "Last delivery", "Subscribed", "Last error")
    return _table((*headings, "Push resource id"), rows, "No routes configured.")


def _adapters(document: dict[str, object]) -> str:
    rows = []
    for adapter in _dicts(document.get("adapters")):
        ok = adapter.get("ok") is True
        rows.append(
            _cell(adapter.get("name"))
            + _cell(adapter.get("type"))
            + _pill(ok, str(adapter.get("state", "unknown")))
            + _cell(adapter.get("detail") or None)
        )
    return _table(("Adapter", "Type", "State", "Detail"), rows, "No adapters configured.")


def _counters(document: dict[str, object]) -> str:
    counters = document.get("counters")
    items = sorted(counters.items()) if isinstance(counters, dict) else []
    rows = [_cell(name) + _cell(value, "num") for name, value in items]
    return _table(("Counter", "Value"), rows, "No counters yet.")


def _sets(document: dict[str, object]) -> str:
    rows = []
    for entry in _dicts(document.get("sets")):
        routes = entry.get("routes")
        names = ", ".join(str(r) for r in routes) if isinstance(routes, list) else "-"
        rows.append(f'<td class="url">{escape(str(entry.get("id", "-")))}</td>' + _cell(names))
    return _table(("Subscription set id", "Routes"), rows, "No subscription set yet.")


def render_status_page(document: dict[str, object], now: float | None = None) -> str:
    """The whole page for a served /status document (tolerates missing or odd fields)."""
    now = time.time() if now is None else now
    health = document.get("health")
    ok = isinstance(health, dict) and health.get("ok") is True
    reason = str(health.get("reason", "")) if isinstance(health, dict) else "no health report"
    verdict = "Working" if ok else "Not working"
    title = f"fieldgate: {verdict.lower()}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<header class="{"ok" if ok else "bad"}"><h1>fieldgate &mdash; {verdict}</h1>'
        f"<p>{escape(reason or 'all good')}</p></header><main>"
        f"{_facts(document, now)}"
        f"<h2>Routes</h2>{_routes(document, now)}"
        f"<h2>Adapters</h2>{_adapters(document)}"
        f"<h2>Counters</h2>{_counters(document)}"
        f"<h2>Subscription sets</h2>{_sets(document)}"
        f"<p>Refreshes every {REFRESH_SECONDS} s. Machine-readable: "
        '<a href="/status">/status</a>, <a href="/metrics">/metrics</a>, '
        '<a href="/healthz">/healthz</a>.</p>'
        "</main></body></html>\n"
    )
