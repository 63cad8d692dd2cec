"""report.html in a real browser: headless Chromium loads it and every embedded figure decodes.

Chromium is Debian's ``chromium`` (installed by ``.ci/run``). Without it the
test is skipped locally, but fails under CI (``CI=true``), where a silent skip
would hide a broken install.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from analysis import report
from tests.analysis.test_report import FIGURES, _write_results

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of the report: after the load event, count the images that
# decoded (complete with a natural width), and write the count into the DOM.
PROBE = ('<script>window.addEventListener("load",function(){var im=document.images,ok=0;'
         'for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}'
         'var d=document.createElement("div");d.id="probe";'
         'd.textContent="images "+ok+"/"+im.length+" title "+document.title;'
         'document.body.appendChild(d);});</script>')


def _render(page: Path, profile: Path) -> str:
    """Load ``page`` in headless Chromium; return the probe's text."""
    probe = page.with_name("probe-" + page.name)
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'<div id="probe">([^<]*)</div>', proc.stdout)
    assert found, f"page did not load (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return found.group(1)


@pytest.fixture
def browser():
    if BROWSER is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return BROWSER


def test_report_loads_in_chromium_with_every_image(tmp_path, browser):
    run = tmp_path / "run"
    _write_results(run)
    report.build(run, formats=("pdf", "png"))
    text = _render(run / "report.html", tmp_path / "profile")
    n = len(FIGURES)
    assert text == f"images {n}/{n} title resablate sweep run", text


def test_chromium_probe_sees_a_broken_image(tmp_path, browser):
    """The check can fail: one corrupted embedded PNG is counted as not loaded."""
    run = tmp_path / "run"
    _write_results(run)
    report.build(run, formats=("png",))
    page = run / "report.html"
    html = page.read_text()
    start = html.index("data:image/png;base64,") + len("data:image/png;base64,")
    page.write_text(html[:start] + "AAAA" + html[start + 200:])
    n = len(FIGURES)
    assert _render(page, tmp_path / "profile") == f"images {n - 1}/{n} title resablate sweep run"
