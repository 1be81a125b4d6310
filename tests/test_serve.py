"""``schedlang serve``: the explorer's server functions (against the API's own figures), its HTTP
routes (Flask's test client), and the page itself in a real headless Chromium (marked ``slow``).

The browser tests need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them)
and ``selenium`` (the ``test`` extra); without them they fail, they do not skip. Screenshots of
the states they check are written to ``tests/artifacts/`` (ignored by git).
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import schedlang.api as sl
from schedlang import serve
from schedlang.program_text import program_differences

ZB = serve.initial_program(None)[0]  # std:zb-h1's text
ARTIFACTS = Path(__file__).parent / "artifacts"


# ------------------------------------------------------------------ server functions


def test_view_gives_the_api_figures() -> None:
    v = serve.view(ZB, "explorer.sched", {"p": "3", "m": "6", "tf": "1, 2, 1", "tc": "0.25"})
    assert v["ok"], v
    want = sl.simulation_dict(sl.compile("std:zb-h1", p=3, m=6, tf=[1, 2, 1], tc=0.25))
    for key in ("makespan", "cost", "bubble_rate", "ranks"):
        assert v[key] == want[key], key
    assert v["params"]["tf"] == [1, 2, 1] and v["params"]["p"] == 3 and v["ignored"] == []
    assert v["svg"].startswith("<svg") and v["svg"].count('class="op"') == 3 * 6 * 3
    # the hover data: one entry per op, by id, with the simulated start and end and memory after it
    sim = sl.simulate(sl.compile("std:zb-h1", p=3, m=6, tf=[1, 2, 1], tc=0.25))
    assert [o["start"] for o in v["ops"]] == list(sim.start)
    assert [o["end"] for o in v["ops"]] == list(sim.end)
    assert max(o["mem_after"] for o in v["ops"] if o["rank"] == 0) == sim.ranks[0].peak_memory
    assert v["ops"][0] == {"name": "F[0,0]", "rank": 0, "start": 0.0, "end": 1.0, "mem": 1.0, "mem_after": 1.0}


def test_view_lists_controls_the_program_does_not_declare() -> None:
    v = serve.view(ZB, "explorer.sched", {"v": "2", "p": ""})
    assert v["ok"] and v["ignored"] == ["v"]  # shown on the page, not silently dropped
    assert "v" not in v["params"] and v["params"]["p"] == 4  # an empty control: the default


def test_view_errors_are_located_in_the_editor() -> None:
    v = serve.view("ranks 2\nmicrobatches 2\nschedul x\n", "explorer.sched", {})
    assert v["ok"] is False
    err = v["error"]
    assert (err["line"], err["col"], err["end_line"], err["end_col"]) == (3, 1, 3, 8)
    assert err["rendered"].startswith("explorer.sched:3:1: error: unexpected 'schedul' (did you mean 'schedule'?)")
    # an error a control's value causes is rendered at the control, not placed in the editor
    v = serve.view(ZB, "explorer.sched", {"tf": "1, 2"})
    assert v["ok"] is False and "line" not in v["error"]
    assert v["error"]["rendered"].startswith("<control tf>:1:1: error: tf: a list of 2 values")


def test_view_errors_in_a_control_name_the_control() -> None:
    v = serve.view(ZB, "explorer.sched", {"m": "3,,"})
    assert v["ok"] is False and v["error"]["control"] == "m"
    assert v["error"]["rendered"].startswith("<control m>:1:1: error: m: unexpected ','")
    # a value the program rejects is reported where the program uses it
    v = serve.view(ZB, "explorer.sched", {"p": "0"})
    assert v["ok"] is False and "at least 1, got 0" in v["error"]["message"]
    assert (v["error"]["line"], v["error"]["col"]) == (ZB.splitlines().index("ranks p") + 1, 7)


def test_compare_rows_are_the_api_figures() -> None:
    res = serve.compare(ZB, "explorer.sched", ["std:1f1b", "std:zb-v", "std:nothing"], {"p": "2", "m": "4", "v": "2"})
    rows = {r["program"]: r for r in res["rows"]}
    assert rows["editor"]["bubble_rate"] == sl.simulate(sl.compile("std:zb-h1", p=2, m=4)).bubble_rate
    assert rows["editor"]["ignored"] == ["v"]
    assert rows["std:1f1b"]["makespan"] == sl.simulate(sl.compile("std:1f1b", p=2, m=4)).makespan
    assert rows["std:zb-v"]["peak_memory"] == [r.peak_memory for r in sl.simulate(sl.compile("std:zb-v", p=2, m=4)).ranks]
    assert rows["std:nothing"]["ok"] is False and "no standard module 'std:nothing'" in rows["std:nothing"]["error"]["message"]
    # one time scale for all pictures (pixels per time unit, within the rounding of a width)
    scales = [float(re.search(r'data-scale="([0-9.]+)"', r["svg"]).group(1)) for r in res["rows"] if r["ok"]]
    assert max(scales) / min(scales) < 1.01, scales


def test_optimize_reports_the_gap_and_the_program() -> None:
    pytest.importorskip("ortools")
    res = serve.optimize(ZB, "explorer.sched", {"p": "2", "m": "3"}, 5)
    assert res["ok"], res
    rep = res["report"]
    assert rep["status"] == "OPTIMAL" and rep["gap"] == 0.0 and rep["objective"] == res["cost"]
    assert res["bubble_rate"] <= sl.simulate(sl.compile("std:zb-h1", p=2, m=3)).bubble_rate
    back = sl.schedule(sl.loads(res["sched"], "opt.sched"))
    assert sl.simulate(back).cost == res["cost"]
    bad = serve.optimize(ZB, "explorer.sched", {}, 0)
    assert bad["ok"] is False and "time budget must be more than 0" in bad["error"]["message"]


def test_downloads_round_trip() -> None:
    prog = sl.compile("std:zb-h1", p=2, m=3)
    data, media, name = serve.download(ZB, "explorer.sched", {"p": "2", "m": "3"}, "sched")
    assert (media, name) == ("text/plain; charset=utf-8", "explorer.sched")
    assert program_differences(prog, sl.schedule(sl.loads(data.decode(), "x.sched"))) == []
    data, _, name = serve.download(ZB, "explorer.sched", {"p": "2", "m": "3"}, "torch-csv")
    assert name == "explorer.csv" and data.decode() == sl.emit(prog, "torch-csv")
    assert len(list(csv.reader(io.StringIO(data.decode())))) == 2
    data, _, _ = serve.download(ZB, "explorer.sched", {"p": "2", "m": "3"}, "chrome-trace")
    assert json.loads(data)["traceEvents"]
    data, media, _ = serve.download(ZB, "explorer.sched", {"p": "2", "m": "3"}, "png")
    assert media == "image/png" and data.startswith(b"\x89PNG\r\n")
    data, _, _ = serve.download(ZB, "explorer.sched", {"p": "2", "m": "3"}, "svg")
    assert data.startswith(b"<svg")
    with pytest.raises(sl.SchedlangError, match="unknown download format 'gif'"):
        serve.download(ZB, "explorer.sched", {}, "gif")


def test_initial_program_from_a_file_keeps_its_name(tmp_path: Path) -> None:
    f = tmp_path / "mine.sched"
    f.write_text(ZB)
    text, name = serve.initial_program(str(f))
    assert text == ZB and name == str(f)
    v = serve.view(text.replace("schedule {", "schedule {{", 1), name, {})
    assert v["error"]["rendered"].startswith(f"{f}:")


# ------------------------------------------------------------------ HTTP routes


@pytest.fixture
def client() -> Any:
    # Flask is in the test extra: without it these fail rather than skip
    return serve.create_app().test_client()


def test_routes(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200 and b'<script src="explorer.js">' in page.data
    assert b"http" not in page.data.replace(b"http-equiv", b"")  # nothing fetched from elsewhere
    assert client.get("/explorer.js").status_code == 200 and client.get("/explorer.css").status_code == 200
    start = client.get("/api/start").get_json()
    assert start["name"] == "explorer.sched" and "std:zb-v" in start["builtins"] and start["text"] == ZB
    r = client.post("/api/view", json={"text": ZB, "params": {"p": "2"}})
    # strict JSON (a browser's JSON.parse has no Infinity): the default memory limit reads "inf"
    v = json.loads(r.data, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert v["ok"] and v["num_ranks"] == 2 and v["params"]["mem_limit"] == "inf"
    e = client.post("/api/view", json={"text": "ranks 1\nmicrobatches 1\nop F time -1\n"}).get_json()
    assert e["ok"] is False and e["error"]["line"] == 3
    r = client.post("/api/download/sched", json={"text": ZB, "params": {"p": "2"}})
    assert r.status_code == 200 and r.headers["Content-Disposition"] == 'attachment; filename="explorer.sched"'
    bad = client.post("/api/download/sched", json={"text": "ranks"})
    assert bad.status_code == 400 and bad.data.startswith(b"explorer.sched:1:6: error: unexpected end of input")
    assert client.post("/api/view", data="not json").get_json()["ok"] is False  # empty text: located error


def test_an_internal_error_is_plain_json_without_a_traceback(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("kaput")

    monkeypatch.setattr(serve, "view", boom)
    r = client.post("/api/view", json={"text": ZB})
    assert r.status_code == 500
    assert r.get_json()["error"]["message"] == "internal error: RuntimeError: kaput (please report it)"
    assert b"Traceback" not in r.data


def test_without_flask_the_command_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import builtins

    from schedlang.cli import main

    real_import = builtins.__import__

    def no_flask(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "flask" or name.startswith("flask."):
            raise ModuleNotFoundError("No module named 'flask'", name="flask")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_flask)
    assert main(["serve", "--port", "0"]) == 1
    assert "schedlang serve needs Flask: pip install 'schedlang[serve]'" in capsys.readouterr().err


def test_serve_command_refuses_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    from schedlang.cli import main

    assert main(["serve", "--port", "70000"]) == 1
    assert "--port 70000 is not a TCP port" in capsys.readouterr().err


# ------------------------------------------------------------------ in a real browser


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = serve.make_server(None, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):  # fail, do not skip: CI installs them (.ci/run)
        pytest.fail("the browser tests need chromium and chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900"):
        opts.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver), options=opts)
    yield b
    b.quit()


def _wait(browser: Any, cond: Any, timeout: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(cond)


def _updates(browser: Any) -> int:
    return int(browser.execute_script("return Number(document.body.dataset.updates || 0)"))


def _shot(browser: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"serve-{name}.png"
    assert browser.save_screenshot(str(path))
    return path


@pytest.mark.slow
def test_browser_page_loads_with_the_picture(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, lambda b: _updates(b) >= 1)
    want = sl.simulate(sl.compile("std:zb-h1"))
    assert browser.find_element(By.ID, "bubble").text == f"{want.bubble_rate * 100:.2f}%"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#picture rect.op")) == 4 * 8 * 3
    assert len(browser.find_elements(By.CSS_SELECTOR, "#ranks tr")) == 1 + 4
    assert browser.find_element(By.ID, "control-v").get_attribute("disabled") == "true"  # zb-h1 has no v
    assert not browser.find_element(By.ID, "error").is_displayed()
    _shot(browser, "loaded")


@pytest.mark.slow
def test_browser_hover_shows_the_op(browser: Any, server: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, lambda b: _updates(b) >= 1)
    box = browser.find_element(By.CSS_SELECTOR, '#picture rect.op[data-op="1"]')
    ActionChains(browser).move_to_element(box).perform()
    hover = browser.find_element(By.ID, "hover")
    _wait(browser, lambda b: hover.is_displayed())
    assert hover.text.splitlines() == ["F[0,1]  rank 0", "start 1  end 2", "memory +1 → 2"]


@pytest.mark.slow
def test_browser_parameter_change_redraws(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, lambda b: _updates(b) >= 1)
    before = browser.find_element(By.CSS_SELECTOR, "#picture svg").get_attribute("outerHTML")
    n = _updates(browser)
    browser.find_element(By.ID, "control-p").send_keys("6")
    browser.find_element(By.ID, "control-tw").send_keys("0.5")
    _wait(browser, lambda b: _updates(b) > n and len(b.find_elements(By.CSS_SELECTOR, "#ranks tr")) == 7)
    _wait(browser, lambda b: b.find_element(By.ID, "bubble").text
          == f"{sl.simulate(sl.compile('std:zb-h1', p=6, tw=0.5)).bubble_rate * 100:.2f}%")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#picture rect.op")) == 6 * 8 * 3
    assert browser.find_element(By.CSS_SELECTOR, "#picture svg").get_attribute("outerHTML") != before
    _shot(browser, "p6")


@pytest.mark.slow
def test_browser_error_shows_its_location(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server)
    _wait(browser, lambda b: _updates(b) >= 1)
    editor = browser.find_element(By.ID, "editor")
    lines = editor.get_attribute("value").splitlines()
    bad_line = next(i for i, ln in enumerate(lines, 1) if ln.startswith("schedule"))
    # misspell the keyword: put the caret after 'schedule' and delete its last letter
    browser.execute_script(
        "const e = arguments[0]; const at = e.value.indexOf('\\nschedule') + 9;"
        "e.focus(); e.setSelectionRange(at, at);", editor)
    editor.send_keys(Keys.BACKSPACE)
    error = browser.find_element(By.ID, "error")
    _wait(browser, lambda b: error.is_displayed())
    assert error.text.startswith(f"explorer.sched:{bad_line}:1: error: unexpected 'schedul' (did you mean 'schedule'?)")
    marked = browser.find_elements(By.CSS_SELECTOR, "#gutter .bad")
    assert [m.text for m in marked] == [str(bad_line)]
    assert "stale" in browser.find_element(By.ID, "picture").get_attribute("class")
    _shot(browser, "error")
    # fixing it clears the error and redraws
    editor.send_keys("e")
    _wait(browser, lambda b: not error.is_displayed())
    assert browser.find_elements(By.CSS_SELECTOR, "#gutter .bad") == []


@pytest.mark.slow
def test_browser_compare_and_optimize(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, lambda b: _updates(b) >= 1)
    for name, value in (("p", "2"), ("m", "3")):
        browser.find_element(By.ID, f"control-{name}").send_keys(value)
    _wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#ranks tr")) == 3)
    browser.find_element(By.CSS_SELECTOR, "#compare-box summary").click()
    browser.find_element(By.CSS_SELECTOR, '#compare-choices input[value="std:1f1b"]').click()
    browser.find_element(By.ID, "compare-run").click()
    _wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#compare-table tr")) == 3)
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#compare-table tr")]
    want = sl.simulate(sl.compile("std:1f1b", p=2, m=3))
    assert rows[2].startswith(f"std:1f1b {want.bubble_rate * 100:.2f}% {want.makespan:g}")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#compare-pictures svg")) == 2
    _shot(browser, "compare")
    browser.find_element(By.CSS_SELECTOR, "#optimize-box summary").click()
    browser.find_element(By.ID, "optimize-run").click()
    status = browser.find_element(By.ID, "optimize-status")
    _wait(browser, lambda b: status.text.startswith("OPTIMAL"), timeout=60)
    assert "gap 0.00%" in status.text and "of 5 s" in status.text
    assert browser.find_elements(By.CSS_SELECTOR, "#optimize-result svg")
    _shot(browser, "optimize")
    # the optimized program goes into the editor as text and compiles there
    n = _updates(browser)
    browser.find_element(By.ID, "use-optimized").click()
    _wait(browser, lambda b: _updates(b) > n)
    assert browser.find_element(By.ID, "editor").get_attribute("value").startswith("# explorer, orders from ilp")
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert browser.find_element(By.ID, "control-p").get_attribute("disabled") == "true"  # values built in
