"""The terminal tables at the widths people use (80 columns first), their units, and the console
width that piped output follows."""
import io
import re
import subprocess
import sys
from collections import Counter

import pytest
from rich.console import Console

from ngl_profile.report.tables import SHORT, rich_summary, size_unit, summary_columns, summary_rows
from ngl_profile.schema.categories import CATEGORIES

from tests.report import fakes

NUMBER = re.compile(r"(?<![\w.,])-?\d{1,3}(?:,\d{3})*\.\d\d(?![\d])")


def render(renderable, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def runs():
    out = [("7b-shaped", fakes.seven_b()), ("7b-shaped measured", fakes.seven_b("measured")),
           ("tiny, MiB", fakes.run([fakes.case("adamw", weights=900 * fakes.MiB, moments=1800 * fakes.MiB // 16),
                                    fakes.case("natural-galore", "natural-galore (s=4)", weights=900 * fakes.MiB,
                                               history=120 * fakes.MiB)], model="tiny"))]
    for name in ("llama-7b-rtx-4090-estimated", "llama-60m-measured-on-cpu"):
        r = fakes.committed(name)
        if r is not None:
            out.append((name, r))
    return out


@pytest.mark.parametrize("width", [80, 100, 120, 160, 240])
@pytest.mark.parametrize("name,run", runs(), ids=[n for n, _ in runs()])
def test_every_number_of_the_run_table_is_readable(name, run, width):
    """Nothing blank or cut at any width: each line fits, no '…', and every size, peak and headroom
    of every case appears whole (a multiset: 12.55 GiB of weights is there once per case)."""
    text = render(rich_summary(run), width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    assert "…" not in text, text
    expected = Counter()
    zero = {SHORT[k] for k in CATEGORIES if not any(c.memory_bytes.get(k) for c in run.cases)}
    for col, unit, cells, _ in summary_columns(run):
        if unit and not (width < 200 and col in zero):  # a column of zeros may be left out, and said so
            expected.update(cells)
    found = Counter(NUMBER.findall(text))
    missing = expected - found
    assert not missing, (dict(missing), text)
    for c in run.cases:  # each peak on a row of its own case (the name may wrap: its first word)
        peak = f"{c.peak_bytes / size_unit([x.peak_bytes for x in run.cases])[1]:,.2f}"
        first = c.label.split("-")[0]
        assert any(line.lstrip("│ ").startswith(first) and peak in line for line in lines), (c.label, peak, text)


def test_at_80_columns_the_7b_table_is_split_not_squeezed():
    text = render(rich_summary(fakes.seven_b()), 80)
    assert "(1/2)" in text and "(2/2)" in text
    starts = [line.split("  ")[0] for line in text.splitlines()]
    assert "natural-galore-8bit-" in starts and "layerwise (s=2, int8)" in starts  # wrapped at a hyphen
    assert "Not shown (the same in every row): provenance (estimated)" in " ".join(text.split())
    assert text.lstrip().startswith("s: llama-7b · batch 1 × seq 256")
    wide = render(rich_summary(fakes.seven_b()), 240)
    assert "(1/2)" not in wide and "provenance" in wide  # wide enough: one table, every column


def test_units_in_every_size_header_and_one_unit_per_magnitude():
    tiny = fakes.run([fakes.case("adamw", weights=1010 * fakes.MiB - 5 * fakes.MiB, moments=5 * fakes.MiB)])
    head, rows = summary_rows(tiny)
    sizes = [h for h in head if h.split(" ")[0] in ("weights", "grads", "moments", "quant", "proj", "history",
                                                     "activ", "temp", "peak", "headroom")]
    assert len(sizes) == 10 and all(h.endswith(("(GiB)", "(MiB)")) for h in sizes), head
    row = dict(zip(head, rows[0]))
    assert row["peak (MiB)"] == "1,010.00"  # a thousands separator
    # the headroom is of the card's magnitude: GiB, even where the model's sizes are MiB
    assert row["headroom (GiB)"] == f"{(24 * fakes.GiB - 512 * fakes.MiB - 1010 * fakes.MiB) / fakes.GiB:,.2f}"
    assert size_unit([3 * fakes.MiB, -2 * fakes.GiB]) == ("GiB", fakes.GiB)
    text = render(rich_summary(tiny), 80)
    assert "MiB" in text and "GiB" in text and "1,010.00" in text


def test_checkpointing_is_in_the_title_and_explained_in_the_caption():
    r = fakes.seven_b(checkpointing=True)
    text = " ".join(render(rich_summary(r), 120).split())
    assert "activation checkpointing" in text
    assert "recomputed during backward are counted as temporaries" in text


# --- the console piped output gets ---

def test_piped_output_follows_columns(monkeypatch):
    from ngl_profile import commands

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    assert commands._console().width == 80
    monkeypatch.setenv("COLUMNS", "137")
    assert commands._console().width == 137
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # no terminal anywhere: a CI log
    assert commands._console().width == 220


def _results(tmp_path):
    import json

    a, b = fakes.seven_b(), fakes.seven_b()
    b.cases[4].optimizer = dict(b.cases[4].optimizer, label="natural-galore-8bit-layerwise (s=4, int8)",
                                hparams={"rank": 1024, "history_size": 4, "history_dtype": "int8"})
    b.cases[4].memory_bytes["history"] *= 2
    paths = []
    for name, r in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(r.to_dict()))
        paths.append(str(tmp_path / name))
    return paths


@pytest.mark.parametrize("columns", [80, 200])
def test_compare_through_a_pipe_is_as_wide_as_columns(tmp_path, columns):
    env = {"COLUMNS": str(columns), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "ngl_profile.cli", "compare", *_results(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    widths = [len(line) for line in r.stdout.splitlines()]
    assert max(widths) <= columns and "…" not in r.stdout, r.stdout
    if columns == 200:
        assert max(widths) > 80  # it does use the room it is given
    assert "+3.02 GiB" in r.stdout and "+100.0%" in r.stdout  # the history doubled, in the row's own unit
    assert "history_size 2 → 4" in " ".join(r.stdout.split())
