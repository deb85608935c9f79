"""report.html says what report.md says, highlights what does not fit, and works in a real browser
(headless Chromium, skipped where none is installed)."""
import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from ngl_profile.report.render import render_report

from tests.report import fakes


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts, self.headings, self._h = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2", "h3"):
            self._h = []

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3") and self._h is not None:
            self.headings.append("".join(self._h))
            self._h = None

    def handle_data(self, data):
        self.parts.append(data)
        if self._h is not None:
            self._h.append(data)


def page_text(path):
    p = _Text()
    p.feed(path.read_text())
    return " ".join(" ".join(p.parts).split()), p.headings


def md_sentences(md: str) -> list[str]:
    """report.md's prose and table cells, without the Markdown around them."""
    out = []
    for line in md.splitlines():
        line = line.strip()
        if not line or line.startswith(("![", "|---")):
            continue
        if line.startswith("|"):
            out += [c.strip() for c in line.strip("|").split("|")]
        else:
            out += [s for s in re.split(r"\*+", line.lstrip("#- ").strip()) if s.strip()]
    return [" ".join(s.split()) for s in out if s.strip()]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    est = fakes.seven_b(checkpointing=True, name="llama-7b")
    meas = fakes.seven_b("measured", name="llama-7b")
    meas.cases[3].status, meas.cases[3].message = "oom", "CUDA out of memory"
    render_report([est, meas], out)
    return out


def test_html_says_everything_report_md_says(report):
    text, _ = page_text(report / "report.html")
    md = (report / "report.md").read_text()
    for piece in md_sentences(md):
        assert piece in text, piece
    for must in ("batch 1 × sequence 256, bfloat16", "Environment: torch 2.13.0+cpu", "roofline:",
                 "recomputed during backward are counted as temporaries", "oom — CUDA out of memory"):
        assert must in text and must in " ".join(md.split()), must


def test_headings_do_not_repeat_the_name_and_tell_runs_apart(report):
    _, headings = page_text(report / "report.html")
    runs = [h for h in headings if " on rtx-4090" in h]
    assert runs == ["llama-7b on rtx-4090 (estimated)", "llama-7b on rtx-4090 (measured)"], headings
    assert not any("llama-7b: llama-7b" in h for h in headings)
    single = fakes.seven_b(name="llama-7b")
    out = report / "single"
    render_report([single], out)
    _, headings = page_text(out / "report.html")
    assert "llama-7b on rtx-4090" in headings
    assert "Memory at the step's peak, by category" in headings  # a single run's charts need no name


def test_too_big_rows_and_negative_headroom_are_highlighted(report):
    page = (report / "report.html").read_text()
    rows = re.findall(r"<tr( class='[^']*')?>(.*?)</tr>", page)
    too_big = [cells for cls, cells in rows if "too-big" in cls]
    assert len(too_big) == 2 * 3 - 1 and all("too big" in cells for cells in too_big)  # OOM is not "too big"
    assert any("oom" in cls and "OOM" in cells for cls, cells in rows)
    negatives = re.findall(r"<td class='negative'>([^<]*)</td>", page)
    assert negatives and all(v.startswith("-") for v in negatives)
    fits = [cells for cls, cells in rows if not cls and ">fits<" in cells]
    assert fits and not any("class='negative'" in cells for cells in fits)


CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
_PROBE = """<script>
window.addEventListener('load', () => {  // --dump-dom waits for the load event; by then every image is in
  const imgs = [...document.images];
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    rows: document.querySelectorAll('table tr').length, tables: document.querySelectorAll('table').length,
    tooBig: document.querySelectorAll('tr.too-big').length});
  document.body.appendChild(out);
});
</script>"""


def probe(page: str, path):
    path.write_text(page.replace("</body>", _PROBE + "</body>"))
    r = chromium("--dump-dom", path.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout)
    assert found, (r.returncode, r.stderr[-2000:])
    return json.loads(html.unescape(found.group(1)))


def chromium(*args, timeout=90):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           *args], capture_output=True, text=True, timeout=timeout)


def test_report_html_in_a_real_browser(report, tmp_path):
    """Every embedded image decodes, the tables are there; a screenshot is not blank. Skipped without
    a Chromium binary, unless NGL_PROFILE_REQUIRE_CHROMIUM is set (CI, which installs one)."""
    if CHROMIUM is None:
        why = "no chromium binary (Debian: apt-get install chromium)"
        if os.environ.get("NGL_PROFILE_REQUIRE_CHROMIUM"):
            pytest.fail(why + ", and NGL_PROFILE_REQUIRE_CHROMIUM is set")
        pytest.skip(why)
    page = (report / "report.html").read_text()
    # a copy with a script that reports what the browser made of the page
    seen = probe(page, tmp_path / "probe.html")
    assert seen["images"] == page.count("<img") > 0 and seen["decoded"] == seen["images"], seen
    assert seen["tables"] == 2 and seen["rows"] == 2 * 7 and seen["tooBig"] == 5, seen
    broken = re.sub(r"base64,[A-Za-z0-9+/]{40}", "base64,AAAA", page, count=1)  # the probe can fail
    assert probe(broken, tmp_path / "broken.html")["decoded"] == seen["images"] - 1

    shot = tmp_path / "shot.png"
    chromium("--window-size=1280,1600", f"--screenshot={shot}", (report / "report.html").as_uri())
    assert shot.exists()
    import numpy as np
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1600, 1280)
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50 and pixels.std() > 0.05, (len(colours), pixels.std())  # text, a table, charts
