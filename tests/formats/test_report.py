"""`keyhealth report`: the timeline model, the self-contained HTML (opened in headless Chromium) and the PNG."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.domain.findings import Thresholds
from monitor.domain.scenario import parse_scenario
from monitor.formats.report import build_timeline, render_html
from monitor.sandbox import Sandbox
from tests.builders import SYSTEM_PRINCIPAL, VAULT, key, namespace, ref, run_cli, scenario, vault, version

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet.json"
OTHER_VAULT = "https://kv-other.vault.azure.net"
T0 = datetime(2026, 11, 22, tzinfo=UTC)


def _fleet() -> dict[str, Any]:
    return scenario(
        [
            namespace("sb-expiring", ref("k-expiring")),
            namespace("sb-two", ref("k-main"), ref("k-other", vault_uri=OTHER_VAULT)),
            namespace("sb-dead", ref("k-deleted")),
            namespace("sb-calm", ref("k-calm")),
        ],
        [
            key("k-expiring", version("e1", exp="2026-12-01T00:00:00Z")),
            key("k-main", version("m1")),
            key("k-other", version("o1"), vault_uri=OTHER_VAULT),
            key("k-deleted", deleted=True),
            key("k-calm", version("c1")),
        ],
        vaults=[vault(), vault(OTHER_VAULT)],
        changes=[
            {"at": "2026-11-29T00:00:00Z", "op": "delete_key", "vault": VAULT, "key": "k-main"},
            {"at": "2026-11-30T00:00:00Z", "op": "recover_key", "vault": VAULT, "key": "k-main"},
            {
                "at": "2026-11-27T00:00:00Z",
                "op": "set_access",
                "vault": OTHER_VAULT,
                "principal": "someone-else",
                "permissions": [],
            },
            {
                "at": "2026-11-28T00:00:00Z",
                "op": "set_access",
                "vault": OTHER_VAULT,
                "principal": SYSTEM_PRINCIPAL,
                "permissions": ["get"],
            },
        ],
    )


def _timeline() -> Any:
    parsed, _ = parse_scenario(_fleet())
    return build_timeline(parsed, Thresholds())


def test_namespaces_come_most_urgent_first():
    """Revoked now, then the soonest predicted revocation, then degraded, then healthy."""
    order = [t.namespace.name for t in _timeline().namespaces]
    assert order == ["sb-dead", "sb-two", "sb-expiring", "sb-calm"]


def test_each_key_lane_shows_its_usable_stretches_and_why_it_stops():
    by_name = {t.namespace.name: t for t in _timeline().namespaces}
    (lane,) = by_name["sb-expiring"].lanes
    assert lane.usable == ((T0, datetime(2026, 12, 1, tzinfo=UTC)),)
    (gap,) = lane.gaps
    assert (gap.start, gap.reasons, gap.unknown) == (datetime(2026, 12, 1, tzinfo=UTC), ("key-expired",), False)
    main, other = by_name["sb-two"].lanes
    assert [(g.start, g.end, g.reasons) for g in main.gaps] == [
        (datetime(2026, 11, 29, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC), ("key-deleted",))
    ]
    assert [(g.start, g.reasons) for g in other.gaps] == [(datetime(2026, 11, 28, tzinfo=UTC), ("access-denied",))]
    (dead,) = by_name["sb-dead"].lanes
    assert dead.usable == () and dead.gaps[0].reasons == ("key-deleted",)


def test_only_the_changes_that_touch_a_namespace_are_marked_on_it():
    by_name = {t.namespace.name: t for t in _timeline().namespaces}
    assert [m.text for m in by_name["sb-two"].changes] == [
        f"principal {SYSTEM_PRINCIPAL[:8]}… now holds get on kv-other",  # not someone else's access
        "key k-main in kv-test deleted",
        "key k-main in kv-test recovered",
    ]
    assert by_name["sb-calm"].changes == ()


def test_the_drawing_stops_a_little_after_the_last_change_not_at_the_horizon():
    fleet = _timeline()
    assert fleet.horizon == T0 + timedelta(days=365)
    assert datetime(2026, 12, 1, tzinfo=UTC) < fleet.shown_until < T0 + timedelta(days=20)


def test_the_html_needs_nothing_from_the_network(tmp_path: Path):
    run = run_cli("report", str(EXAMPLE), "--out", str(tmp_path / "report.html"))
    assert run.status == 0, run.stderr
    listed = len(json.loads(EXAMPLE.read_text())["namespaces"])
    assert run.stdout.strip() == f"keyhealth: wrote {tmp_path / 'report.html'} ({listed} namespaces)"
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    fetched = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert fetched and all(target.startswith(("#", "data:")) for target in fetched), fetched
    assert "@import" not in page and "url(http" not in page
    embedded = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert embedded is not None
    data = json.loads(embedded[1])
    names = sorted(n["name"] for n in json.loads(EXAMPLE.read_text())["namespaces"])
    assert sorted(n["name"] for n in data["namespaces"]) == names


def test_names_from_the_fleet_are_escaped():
    hostile = _fleet()
    hostile["namespaces"][0]["name"] = "<script>alert(1)</script>"
    parsed, _ = parse_scenario(hostile)
    page = render_html(build_timeline(parsed, Thresholds()), source="test", generated=T0)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_png_is_written_beside_the_html(tmp_path: Path):
    from PIL import Image

    run = run_cli("report", str(EXAMPLE), "--out", str(tmp_path / "fleet.html"), "--png")
    assert run.status == 0, run.stderr
    with Image.open(tmp_path / "fleet.png") as image:
        width, height = image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert width >= 1000 and height >= 400
    # The revoked red of the drawing is there (sb-archive, sb-audit and sb-staging are revoked now).
    assert any(count > 500 and rgb == (0xB2, 0x22, 0x22) for count, rgb in colours)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "--out", "x.html"], "give a scenario file or --live"),
        (["report", str(EXAMPLE), "--live"], "give a scenario file or --live"),
        (["report", str(EXAMPLE), "--out", "/nonexistent-dir/r.html"], "cannot write: No such file or directory"),
        (["report", str(EXAMPLE), "--horizon", "2020-01-01T00:00:00Z"], "--horizon: must be after now"),
    ],
)
def test_bad_input_is_named_and_exits_2(argv: list[str], message: str):
    run = run_cli(*argv)
    assert run.status == 2
    assert message in run.stderr and "Traceback" not in run.stderr


@pytest.fixture
def live_fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    http_challenge_cache.clear()
    parsed, _ = parse_scenario(_fleet())
    with Sandbox(parsed) as running:
        for name, value in running.environment().items():
            monkeypatch.setenv(name, value)
        yield running
    http_challenge_cache.clear()


def test_live_report_reads_the_fleet_over_https(live_fleet: Sandbox, tmp_path: Path):
    """--live reads what `check` reads (the stand-in here): every namespace, judged at the given instant."""
    run = run_cli("report", "--live", "--at", "2026-11-22T00:00:00Z", "--out", str(tmp_path / "live.html"))
    assert run.status == 0, run.stderr
    page = (tmp_path / "live.html").read_text(encoding="utf-8")
    for name in ("sb-expiring", "sb-two", "sb-dead", "sb-calm"):
        assert f'data-namespace="{name}"' in page
    assert "live fleet" in page
    assert 'data-namespace="sb-dead" data-status="revoked"' in page


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(
            "Debian's chromium is not installed and `make test` could not install it (apt-get install chromium)"
        )
    return found


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            # As root, and on a machine with no outside network: no sandbox, no calls home.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield launched
        finally:
            launched.close()


def test_the_report_opens_in_chromium_and_shows_every_namespace(browser: Any, tmp_path: Path):
    """Headless Chromium, offline: no console error, every namespace of the scenario drawn, the filter works."""
    report = tmp_path / "report.html"
    assert run_cli("report", str(EXAMPLE), "--out", str(report)).status == 0
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on(
        "console",
        lambda message: (
            problems.append(f"{message.type}: {message.text}") if message.type in {"error", "warning"} else None
        ),
    )
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri())
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert problems == []
    assert requests == [report.as_uri()]  # nothing else fetched

    expected = sorted(n["name"] for n in json.loads(EXAMPLE.read_text())["namespaces"])
    headings = page.locator("article.namespace h2 .name")
    assert sorted(headings.all_inner_texts()) == expected
    for index in range(headings.count()):
        assert headings.nth(index).is_visible()
    # Each namespace has its timeline drawn with a lane per listed key plus the namespace's own.
    for name in expected:
        article = page.locator(f'article[data-namespace="{name}"]')
        listed = next(len(n["keys"]) for n in json.loads(EXAMPLE.read_text())["namespaces"] if n["name"] == name)
        assert article.locator("svg.timeline text.lane-label").count() == listed + 1
        box = article.locator("svg.timeline").bounding_box()
        assert box is not None and box["width"] > 600 and box["height"] > 40
    assert page.locator("table.overview tbody tr").count() == len(expected)
    # The Geo-DR pairs are shown on their namespaces, a failover that would revoke the partner as a risk.
    ledger = page.locator('article[data-namespace="sb-ledger"] .geo-dr')
    assert (
        ledger.inner_text()
        == "Geo-DR primary of alias ledger, paired with sb-ledger-dr: failover would revoke sb-ledger-dr"
    )
    assert ledger.get_attribute("data-failover") == "would-revoke-partner" and "risk" in (
        ledger.get_attribute("class") or ""
    )
    assert "double" in page.locator('article[data-namespace="sb-analytics"] .meta').inner_text()
    assert page.locator('article[data-namespace="sb-audit"] .geo-dr').count() == 0
    # Each namespace names its service: the Event Hubs one beside the Service Bus ones.
    assert page.locator('article[data-namespace="eh-clickstream"] h2 .kind').inner_text() == "Event Hubs"
    assert page.locator('article[data-kind="servicebus"]').count() == len(expected) - 1

    page.fill("#filter", "sb-aud")
    assert page.locator("#shown").inner_text() == "1"
    assert page.locator("article.namespace:visible h2 .name").all_inner_texts() == ["sb-audit"]
    page.fill("#filter", "")
    page.uncheck('input[data-status-filter="healthy"]')
    visible = page.locator("article.namespace:visible").evaluate_all("els => els.map(e => e.dataset.status)")
    assert visible and "healthy" not in visible
    assert problems == []

    from PIL import Image

    with Image.open(tmp_path / "report.png") as shot:
        assert shot.size[0] == 1280 and shot.size[1] > 2000  # the whole page, every namespace in it
