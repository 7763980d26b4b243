"""The regression run's report, ``outputs/index.html``, opened in headless Chromium as a person would.

A tiny curriculum (two notebooks that save a figure and write metrics, one that raises) runs twice through
``python -m partlab.notebooks run``; the page must list every notebook as a link that resolves (the failed
one to its executed copy with the traceback), show the figures as thumbnails that load, and plot the
headline metrics of both runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from partlab.notebooks.__main__ import main
from test_browser import skip_without_chromium, start_chromium
from test_runner import PARAMS, TINY, _notebook

pytestmark = [pytest.mark.browser, pytest.mark.notebook]


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    skip_without_chromium()
    driver = start_chromium(tmp_path_factory.mktemp("chromedriver") / "chromedriver.log",
                            ("--allow-file-access-from-files",))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_report_links_every_notebook_and_shows_figures_and_trends(tmp_path, chromium, capsys):
    folder, out = tmp_path / "nb", tmp_path / "out"
    folder.mkdir()
    names = ["00_tiny", "01_other", "02_bad"]
    _notebook(folder / "00_tiny.ipynb", TINY, PARAMS)
    _notebook(folder / "01_other.ipynb", TINY, PARAMS)
    _notebook(folder / "02_bad.ipynb", "raise RuntimeError('boom')", PARAMS)
    for _ in range(2):                                             # two runs: a trend of two points
        assert main(["run", "--notebooks", str(folder), "--output-dir", str(out), "--no-check", "--html",
                     "--jobs", "2"]) == 1                          # 02_bad fails
    assert f"report: {(out / 'index.html').resolve()}" in capsys.readouterr().out

    chromium.get((out / "index.html").resolve().as_uri())
    rows = chromium.execute_script("""
        return Array.from(document.querySelectorAll('#notebooks tr')).slice(1).map(tr => ({
            name: tr.cells[0].innerText, href: (tr.cells[0].querySelector('a') || {}).href || null,
            status: tr.cells[1].innerText, headline: tr.cells[3].innerText, moved: tr.cells[4].innerText,
            thumbs: Array.from(tr.cells[5].querySelectorAll('img')).map(i => i.complete && i.naturalWidth > 0)}));
    """)
    assert [r["name"] for r in rows] == names
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    for row in rows:
        assert row["href"] and row["href"].startswith("file://"), row
        assert Path(row["href"][len("file://"):]).is_file(), f"{row['name']} links to a missing page"
    assert rows[0]["headline"] == "score 0.50" and rows[0]["thumbs"] == [True]
    assert "RuntimeError: boom" in rows[2]["moved"]
    trends = chromium.execute_script("""
        return Array.from(document.querySelectorAll('.trend img')).map(i => i.complete && i.naturalWidth > 0);""")
    assert trends == [True, True], "one loaded trend plot per notebook that wrote headline metrics"
    chromium.get(rows[2]["href"])                                    # the failed notebook's page: the traceback
    assert "RuntimeError" in chromium.find_element("tag name", "body").text
