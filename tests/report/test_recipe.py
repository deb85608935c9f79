"""What each figure assumes: the precision recipe and attention in every title, each row's code path
and rank in report.md and report.html; files written before these were recorded still render."""
import io
import re

from rich.console import Console

from ngl_profile.report import charts
from ngl_profile.report.render import render_report
from ngl_profile.report.tables import rich_summary, summary_rows, title_line

from tests.report import fakes

PATHS = {"adamw": "torch AdamW, foreach (CUDA default)", "galore-8bit-layerwise": "galore step per layer"}


def recipe_run(**kw):
    run = fakes.seven_b(**kw)
    run.scenario.update(precision="mixed-bf16", attention="eager")
    for c in run.cases:
        c.code_path = PATHS.get(c.optimizer["name"], f"{c.optimizer['name']} eager kernels")
    return run


def test_titles_name_the_recipe_and_attention():
    run = recipe_run()
    assert title_line(run) == "llama-7b · batch 1 × seq 256 · precision mixed-bf16 · attention eager"
    fig = charts.memory_breakdown_figure(run)
    assert "precision mixed-bf16 · attention eager" in " ".join(fig._suptitle.get_text().split())
    console = Console(width=240, file=io.StringIO(), color_system=None)
    console.print(rich_summary(run))
    text = " ".join(console.file.getvalue().split())
    assert "precision mixed-bf16 · attention eager" in text
    assert "float32 master weights, grads and optimizer state; forward under bf16 autocast" in text


def test_old_files_name_only_their_dtype():
    run = fakes.seven_b()  # no precision, no attention, no code paths
    assert title_line(run) == "llama-7b · batch 1 × seq 256 · bfloat16"


def test_rank_column_per_row():
    head, rows = summary_rows(recipe_run())
    ranks = {r[0]: r[head.index("rank")] for r in rows}
    # the ranks fakes.seven_b gives: 1024 for the GaLore family, 64 for LoRA, none for AdamW
    assert ranks == {"adamw": "—", "adamw8bit": "—", "galore-8bit-layerwise": "1024", "natural-galore (s=10)": "1024",
                     "natural-galore-8bit-layerwise (s=2, int8)": "1024", "lora": "64"}


def test_report_shows_each_rows_code_path(tmp_path):
    run = recipe_run()
    render_report([run], tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Modelled: precision recipe mixed-bf16 (float32 master weights" in md and "attention eager." in md
    for c in run.cases:
        assert f"- **{c.label}**: {c.code_path}" in md
    page = (tmp_path / "report.html").read_text()
    assert "<li><b>adamw</b>: torch AdamW, foreach (CUDA default)</li>" in page
    assert "precision recipe mixed-bf16" in page


def test_an_old_file_renders_without_them(tmp_path):
    render_report([fakes.seven_b()], tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Code path" not in md and "Modelled:" not in md and "precision" not in md
    assert re.search(r"\| lora \|.*\| 64 \| estimated \|", md)


def test_a_size_only_card_says_why_tokens_per_s_is_na(tmp_path):
    run = fakes.seven_b()
    run.gpu = {"name": "custom-20GiB", "memory_bytes": 20 * fakes.GiB, "bf16_tflops": None, "bandwidth_gbs": None}
    for c in run.cases:
        c.projected = None
    render_report([run], tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "tokens/s n/a: custom-20GiB is a memory size only" in md
    assert "| n/a |" in md and "proj." not in md
