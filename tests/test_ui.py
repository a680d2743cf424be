"""`launch ui` and `launch report` in a real browser (Debian's chromium and chromium-driver, headless,
driven by Selenium; .ci/run installs them): what the pages show of real runs, that they refresh by
themselves, open offline, refuse a request without the token, and show a run's text as text.
Screenshots are saved in each test's tmp dir."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.launch import REPO, run_launch
from tests.helpers.runs import events, submit, wait_end

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# A config value made to run if a page ever read a run's text as HTML
EVIL = "<script>window.PWNED=1</script><img src=x onerror=\"window.PWNED=2\"> & </pre>"


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: apt-get install chromium chromium-driver "
                    "(.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`launch ui` as a user starts it, in a subprocess."""

    def __init__(self, runs: Path, *extra: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "ui", "--runs-dir", str(runs),
                                      "--port", str(self.port), *extra], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"launch ui exited: {self.proc.stdout.read()}") from None
                time.sleep(0.2)
        raise AssertionError("launch ui did not start listening in 60 s")

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return out


@pytest.fixture(scope="module")
def ui_runs(tmp_path_factory, interrupted_script_run) -> Path:
    """A runs directory holding the session's interrupted script run (linked, not copied)."""
    runs = tmp_path_factory.mktemp("ui") / "runs"
    job_dir = runs / interrupted_script_run.parent.name
    job_dir.mkdir(parents=True)
    (job_dir / interrupted_script_run.name).symlink_to(interrupted_script_run)
    return runs


@pytest.fixture(scope="module")
def server(ui_runs):
    srv = Server(ui_runs)
    yield srv
    srv.stop()


def console_errors(driver) -> list[dict]:  # noqa: ANN001
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait_js(driver, script: str, timeout: float = 30):  # noqa: ANN001, ANN201
    """The value of `script` once it is truthy."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not true in {timeout} s: {script}")


def expected_attempts(run_dir: Path) -> dict:
    """What the run's own events say the page must show: 4 attempts, 2 preemptions, 1 restart."""
    evs = events(run_dir)
    return {"attempts": sum(e["event"] == "started" for e in evs),
            "preempted": sum(e["event"] == "preempted" for e in evs),
            "restarted": sum(e["event"] == "restarted" for e in evs)}


def read_page(driver) -> dict:  # noqa: ANN001
    """What the run page shows: the attempts table, the timeline's traces, the metric charts."""
    return driver.execute_script("""
        var rows = Array.from(document.querySelectorAll('#attempts tbody tr.attempt'));
        var timeline = document.getElementById('timeline').data;
        var metrics = {};
        document.querySelectorAll('.metric').forEach(function (div) {
          metrics[div.getAttribute('data-metric')] = {x: Array.from(div.data[0].x), y: Array.from(div.data[0].y)};
        });
        return {
          attempts: rows.map(function (r) {
            return {phases: Array.from(r.querySelectorAll('.phase')).map(function (p) { return p.getAttribute('data-phase'); }),
                    markers: Array.from(r.querySelectorAll('.marker'))
                               .map(function (m) { return m.getAttribute('data-event'); })};
          }),
          bars: Array.from(new Set([].concat.apply([], timeline.filter(function (t) { return t.type === 'bar'; })
                                   .map(function (t) { return t.y; })))).length,
          markers: Object.fromEntries(timeline.filter(function (t) { return t.type === 'scatter'; })
                                      .map(function (t) { return [t.name, t.x.length]; })),
          metrics: metrics,
          state: document.getElementById('state').textContent,
          config: document.getElementById('config').textContent,
          script: document.getElementById('script').textContent,
          ranks: document.querySelectorAll('#heartbeats tr.rank').length,
          goodput: document.getElementById('goodput').textContent,
        };""")


def logged_points(run_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    """metrics.csv's points, metric by metric (x the step), read here with the csv module."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for name in [n for n in rows[0] if n not in ("step", "epoch")]:
        kept = [(float(r["step"]), float(r[name])) for r in rows if r[name] != ""]
        out[name] = ([x for x, _ in kept], [y for _, y in kept])
    return out


def assert_shows_the_interrupted_run(shown: dict, run_dir: Path) -> None:
    want = expected_attempts(run_dir)
    assert want == {"attempts": 4, "preempted": 2, "restarted": 1}, want
    attempts = shown["attempts"]
    assert len(attempts) == 4 and shown["bars"] == 4, shown
    # each attempt: the wait before it (locally a requeue can take under a millisecond: no bar), its
    # start-up and training, then how it ended
    first, second, third, last = ([p for p in a["phases"] if p != "requeue"] for a in attempts)
    assert attempts[0]["phases"][:2] == ["queue", "start-up"], attempts[0]
    assert all(a["phases"][0] in ("requeue", "start-up") for a in attempts[1:]), attempts
    assert first[-3:] == ["training", "checkpoints", "stopping"], first
    assert second[0] == "start-up" and second[-3:] == ["training", "checkpoints", "stopping"], second
    assert third[0] == "start-up" and third[-1] == "training", third  # killed while training
    assert last[0] == "start-up" and last[-2:] == ["training", "finishing"], last
    assert [a["markers"] for a in attempts] == [["preempted"], ["resumed", "preempted"], ["resumed", "restarted"],
                                                ["resumed"]], attempts
    assert shown["markers"] == {"preempted": 2, "restarted": 1, "resumed": 3}, shown["markers"]
    points = logged_points(run_dir)
    assert set(shown["metrics"]) == set(points) and "train_loss" in "".join(points), (shown["metrics"].keys(), points.keys())
    for name, (xs, ys) in points.items():
        assert (shown["metrics"][name]["x"], shown["metrics"][name]["y"]) == (xs, ys), name
    assert shown["state"] == "completed" and shown["ranks"] == 3 and shown["goodput"].startswith("goodput 0."), shown
    assert shown["config"] == (run_dir / "config.toml").read_text()
    assert shown["script"] == (run_dir / "command.txt").read_text()


@pytest.mark.multiprocess
def test_the_runs_page_lists_runs_and_a_run_page_shows_its_attempts_phases_markers_and_points(
        browser, server, interrupted_script_run, tmp_path) -> None:
    run_dir = interrupted_script_run
    browser.get(server.base + "/")
    wait_js(browser, "return document.querySelectorAll('#runs tbody tr.run-row').length")
    rows = browser.execute_script("return Array.from(document.querySelectorAll('#runs tbody tr.run-row'))"
                                  ".map(r => Array.from(r.cells).map(c => c.textContent))")
    status = json.loads(run_launch("status", str(run_dir), "--json").stdout)
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in rows] == [
        (run_dir.name, run_dir.parent.name, "completed", str(status["global_step"]), str(status["restarts"]))], rows
    field = browser.find_element("id", "runs-filter")
    field.send_keys("no-such-job")
    assert browser.execute_script("return document.querySelectorAll('#runs tbody tr.run-row').length") == 0
    field.clear()
    field.send_keys(run_dir.parent.name)
    browser.save_screenshot(str(tmp_path / "runs.png"))
    browser.find_element("link text", run_dir.name).click()
    wait_js(browser, "return document.getElementById('timeline') && document.getElementById('timeline').data")
    browser.save_screenshot(str(tmp_path / "run.png"))
    assert_shows_the_interrupted_run(read_page(browser), run_dir)
    assert console_errors(browser) == []


@pytest.mark.multiprocess
def test_the_report_is_one_file_that_opens_offline_and_shows_what_the_page_shows(browser, interrupted_script_run,
                                                                                  tmp_path) -> None:
    out = tmp_path / "report.html"
    result = run_launch("report", str(interrupted_script_run), "--out", str(out))
    assert result.returncode == 0 and result.stdout.strip() == str(out), result.stderr
    assert external_references(out.read_text()) == []
    browser.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
    try:
        browser.get(out.as_uri())
        wait_js(browser, "return document.getElementById('timeline') && document.getElementById('timeline').data")
        browser.save_screenshot(str(tmp_path / "report.png"))
        assert_shows_the_interrupted_run(read_page(browser), interrupted_script_run)
        # nothing was fetched: every script, style and datum is in the file
        assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
        assert console_errors(browser) == []
    finally:
        browser.delete_network_conditions()


@pytest.mark.multiprocess
def test_a_running_runs_page_updates_by_itself_and_shows_its_config_text_as_text(browser, digits_job, tmp_path) -> None:
    """A run whose config holds HTML and script: its page, opened while it starts, follows it to its
    end without a reload, and shows the value as the characters it is (nothing of it runs)."""
    job = digits_job(name="live", model="tests.helpers.modules.EchoMLP", epochs=2)
    job.write_text(job.read_text().replace("init_args = { in_features", f"init_args = {{ note = 'x', report_dir = "
                                           f"{json.dumps(str(tmp_path / 'seen'))}, in_features"))
    runs = tmp_path / "runs"
    runs.mkdir()
    srv = Server(runs)
    try:
        run_dir = submit(job, runs, "--procs", "1", "--set", f"model.init_args.note={EVIL}")
        ref = f"{run_dir.parent.name}/{run_dir.name}"
        browser.get(f"{srv.base}/run/{ref}")
        assert browser.title.endswith(ref.replace("/", " / "))
        first = wait_js(browser, "return document.getElementById('state') && document.getElementById('state').textContent")
        assert first not in ("completed", "failed"), f"the run ended before its page opened ({first}): make it longer"
        browser.execute_script("window.sameDocument = true")
        wait_js(browser, "return document.getElementById('state').textContent === 'completed'", timeout=240)
        wait_js(browser, "return document.querySelectorAll('.metric').length > 0")
        browser.save_screenshot(str(tmp_path / "live.png"))
        assert browser.execute_script("return window.sameDocument") is True  # refreshed in place, not reloaded
        assert browser.execute_script("return window.PWNED === undefined")
        config = browser.execute_script("return document.getElementById('config').textContent")
        assert (run_dir / "config.toml").read_text() == config and tomllib.loads(config)["model"]["init_args"]["note"] == EVIL
        # the value's tags are text inside #config, never elements of the page
        assert browser.execute_script("return document.querySelectorAll('img').length") == 0
        assert browser.execute_script("return document.querySelectorAll('script').length") == 3  # data, Plotly, app.js
        assert console_errors(browser) == []
        assert wait_end(run_dir, timeout=30)["state"] == "completed"
        # the same value in the report file: text there too
        out = tmp_path / "live.html"
        assert run_launch("report", str(run_dir), "--out", str(out)).returncode == 0
        browser.get(out.as_uri())
        wait_js(browser, "return document.getElementById('config')")
        assert browser.execute_script("return window.PWNED === undefined && document.querySelectorAll('img').length === 0")
        assert browser.execute_script("return document.getElementById('config').textContent") == config
    finally:
        srv.stop()


def external_references(text: str) -> list[str]:
    """Every src or href of the document's own tags that is not inline data (what a browser would fetch)."""
    from html.parser import HTMLParser

    found = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list) -> None:
            found.extend(f"<{tag} {k}={v}>" for k, v in attrs if k in ("src", "href") and v and not v.startswith("data:"))

    Tags().feed(text)
    return found


def fetch(url: str, **headers: str) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


def test_with_a_token_every_request_must_carry_it_and_other_hosts_need_one(tmp_path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    srv = Server(runs, "--token", "s3cret-Token")
    try:
        for path in ("/", "/api/runs", "/static/app.js", "/run/a/b"):
            assert fetch(srv.base + path)[0] == 401, path
            assert fetch(srv.base + path + "?token=wrong")[0] == 401, path
            assert fetch(srv.base + path, Authorization="Bearer wrong")[0] == 401, path
        status, body, headers = fetch(srv.base + "/?token=s3cret-Token")
        assert status == 200 and "launch" in body, status
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        assert fetch(srv.base + "/api/runs", Cookie=cookie)[:2] == (200, "[]")  # the page's own requests
        assert fetch(srv.base + "/api/runs", Authorization="Bearer s3cret-Token")[0] == 200
    finally:
        srv.stop()
    # without a token: loopback only, and only under a loopback name (no DNS rebinding)
    srv = Server(runs)
    try:
        assert fetch(srv.base + "/api/runs")[0] == 200
        assert fetch(srv.base + "/api/runs", Host="evil.example")[0] == 400
        status, _, headers = fetch(srv.base + "/")
        assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
        assert fetch(srv.base + "/run/../..")[0] == 404
    finally:
        srv.stop()
    refused = run_launch("ui", "--runs-dir", str(runs), "--host", "0.0.0.0", "--port", str(free_port()), timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--token" in refused.stderr, refused.stderr
