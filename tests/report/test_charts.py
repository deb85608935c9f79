"""The charts' figures, inspected as a reader would see them: shared scales, the card's memory line,
nothing clipped or drawn over a title or a legend, every series and category present."""
import copy

import pytest

from ngl_profile.report import charts

from tests.report import fakes

GiB, MiB = fakes.GiB, fakes.MiB


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    charts.plt().close("all")


def extent(fig, artist):
    return artist.get_window_extent(fig.canvas.get_renderer())


def inside(fig, artist) -> bool:
    box, whole = extent(fig, artist), fig.bbox
    return box.x0 >= whole.x0 - 1 and box.x1 <= whole.x1 + 1 and box.y0 >= whole.y0 - 1 and box.y1 <= whole.y1 + 1


def overlap(fig, a, b) -> bool:
    return extent(fig, a).overlaps(extent(fig, b))


def one_case(**kw):
    return fakes.run([fakes.case("natural-galore", hparams={"rank": 128, "history_size": 4}, weights=110 * MiB,
                                 moments=150 * MiB, history=96 * MiB, activations=137 * MiB,
                                 temporaries=250 * MiB)], model="llama-60m", batch=4, **kw)


# --- step_timeline ---

@pytest.mark.parametrize("run", [fakes.seven_b(), one_case(), fakes.seven_b("measured")],
                         ids=["six cases", "one case", "measured"])
def test_step_timeline_panels_share_one_scale_and_the_legend_clears_the_title(run):
    fig = charts.step_timeline_figure(run)
    axes = [ax for ax in fig.axes if ax.axison]
    assert len(axes) == len(run.cases)
    limits = {ax.get_ylim() for ax in axes}
    assert len(limits) == 1 and next(iter(limits))[0] == 0, limits  # one y-range, from 0
    for ax in axes:
        assert "not time" in ax.get_xlabel()
    (legend,) = fig.legends
    title = fig._suptitle
    assert not overlap(fig, legend, title)
    assert inside(fig, legend) and inside(fig, title)
    for ax in axes:
        assert not overlap(fig, legend, ax.title)


def test_step_timeline_draws_the_card_or_says_it_is_off_the_scale():
    fig = charts.step_timeline_figure(fakes.seven_b())
    for ax in (a for a in fig.axes if a.axison):
        caps = [line for line in ax.get_lines() if line.get_gid() == "capacity"]
        assert len(caps) == 1 and caps[0].get_ydata()[0] == pytest.approx(24.0)
        assert ax.get_ylim()[1] >= 24.0
    assert any("rtx-4090: 24.0 GiB" in t.get_text() for t in fig.legends[0].get_texts())
    small = charts.step_timeline_figure(one_case())  # 750 MiB against 24 GiB: a line would flatten it
    assert not any(line.get_gid() == "capacity" for ax in small.axes for line in ax.get_lines())
    assert "off this scale" in small._suptitle.get_text()


def test_step_timeline_of_a_measured_run_gives_each_phase_its_time():
    fig = charts.step_timeline_figure(fakes.seven_b("measured"))
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert all("forward 200.0 ms · backward 400.0 ms · optimizer 50.0 ms" in t for t in titles), titles


# --- memory_breakdown ---

def test_memory_breakdown_title_is_whole_and_the_capacity_label_clears_the_legend():
    for run in (one_case(), fakes.seven_b(), fakes.seven_b(name="a-user-scenario-with-a-long-name")):
        fig = charts.memory_breakdown_figure(run)
        (ax,) = fig.axes
        assert inside(fig, fig._suptitle) and inside(fig, ax.title), run.scenario["name"]
        legend = ax.get_legend()
        assert inside(fig, legend)
        for label in (t for t in ax.texts if t.get_gid() == "capacity-label"):
            assert not overlap(fig, label, legend)
            box, axes_box = extent(fig, label), ax.get_window_extent()
            assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 + 1


def test_memory_breakdown_capacity_line_and_checkpointing():
    fig = charts.memory_breakdown_figure(fakes.seven_b())
    (ax,) = fig.axes
    assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == pytest.approx(24.0) for line in ax.get_lines())
    assert "checkpointing" not in fig._suptitle.get_text()
    fig = charts.memory_breakdown_figure(one_case(checkpointing=True))
    (ax,) = fig.axes
    assert "activation checkpointing" in fig._suptitle.get_text().replace("\n", " ")
    labels = [t.get_text().replace("\n", " ") for t in ax.get_legend().get_texts()]
    assert "temporaries (incl. recomputed activations)" in labels
    assert "off this scale" in ax.get_title().replace("\n", " ")


# --- size_sweep ---

def sweep(batch_7b=1):
    small = fakes.seven_b(model="llama-1b", batch=4)
    for c in small.cases:
        c.memory_bytes = {k: v // 5 for k, v in c.memory_bytes.items()}
        c.peak_bytes //= 5
        c.params = {"total": c.params["total"] // 5}
    small.cases[4].optimizer = dict(small.cases[4].optimizer, label="natural-galore-8bit-layerwise (s=4, int8)")
    return [small, fakes.seven_b(batch=batch_7b)]


def test_size_sweep_joins_one_optimizer_across_settings_and_says_where_they_change():
    fig = charts.size_sweep_figure(sweep())
    (ax,) = [a for a in fig.axes if a.get_legend() is not None]
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 1 or line.get_marker() not in ("None", "")]
    series = {line.get_label().split("\n")[0]: line for line in lines if not line.get_label().startswith("_")}
    assert set(series) == {"adamw", "adamw8bit", "galore-8bit-layerwise", "natural-galore", "lora",
                           "natural-galore-8bit-layerwise"}
    assert all(len(line.get_xdata()) == 2 for line in series.values())  # one connected line each
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "s=4, int8: llama-1b" in legend and "s=2, int8: llama-7b" in legend


def test_size_sweep_draws_in_the_units_asked_for():
    runs = sweep()
    for units, unit, scale in (("GiB", "GiB", 1 << 30), ("GB", "GB", 10**9)):
        fig = charts.size_sweep_figure(runs, units)
        (ax,) = [a for a in fig.axes if a.get_legend() is not None]
        assert ax.get_ylabel() == f"{unit} at the step's peak"
        line = next(x for x in ax.get_lines() if x.get_label().startswith("adamw\n") or x.get_label() == "adamw")
        assert sorted(line.get_ydata()) == sorted(r.cases[0].peak_bytes / scale for r in runs)
        (cap,) = [x for x in ax.get_lines() if x.get_gid() == "capacity"]
        assert cap.get_ydata()[0] == pytest.approx(runs[0].gpu["memory_bytes"] / scale)


def test_size_sweep_does_not_mix_batch_sizes_silently():
    fig = charts.size_sweep_figure(sweep(batch_7b=1))
    assert "batch × seq differs between models" in fig._suptitle.get_text().replace("\n", " ")
    top = [child for ax in fig.axes for child in ax.child_axes]  # the secondary x-axis
    tops = [t.get_text() for a in top for t in a.xaxis.get_ticklabels()]
    assert any("llama-1b\n4×256" == t for t in tops) and any("llama-7b\n1×256" == t for t in tops), tops
    same = sweep()
    same[1].scenario["batch_size"] = 4
    fig = charts.size_sweep_figure(same)
    assert "batch × seq 4×256 for every model" in fig._suptitle.get_text()


# --- throughput ---

def test_throughput_has_error_bars_where_a_spread_is_recorded_and_says_so_where_not():
    run = fakes.seven_b("measured")
    fig = charts.throughput_figure(run)
    (ax,) = fig.axes
    assert not ax.containers[1:]  # only the bars
    assert "no per-step spread" in ax.get_title().replace("\n", " ")
    spread = copy.deepcopy(run)
    for c in spread.cases:
        c.step_time_s.update(total_min=0.5, total_max=0.8)  # around the 0.65 s median
    fig = charts.throughput_figure(spread)
    (ax,) = fig.axes
    from matplotlib.container import ErrorbarContainer

    (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = bars.lines[2][0].get_segments()
    tokens = run.scenario["batch_size"] * run.scenario["seq_len"]
    assert segments[0][0][1] == pytest.approx(tokens / 0.8) and segments[0][1][1] == pytest.approx(tokens / 0.5)
    assert "slowest to fastest step" in ax.get_title().replace("\n", " ")
    assert charts.throughput_figure(fakes.seven_b()) is None  # estimated: nothing measured to draw


# --- estimated_vs_measured ---

def test_estimated_vs_measured_shows_small_categories_and_their_numbers():
    est, meas = fakes.seven_b(), fakes.seven_b("measured")
    meas.cases[1].memory_bytes["quant_stats"] = 210 * MiB  # a small category that differs
    fig = charts.estimated_vs_measured_figure(est, meas)
    axes = [ax for ax in fig.axes if ax.axison]
    assert len(axes) == 6
    for ax, e in zip(axes, est.cases):
        assert ax.get_xscale() == "log"
        values = [t.get_text() for t in ax.texts if t.get_gid() == "value"]
        cats = [t.get_text() for t in ax.get_yticklabels()]
        assert len(values) == len(cats)
        for patch in ax.patches:  # every non-zero bar is visible, however small
            if patch.get_width() > 0:
                assert extent(fig, patch).width >= 2, (e.label, patch.get_width())
    adamw8bit = [t.get_text() for t in axes[1].texts if t.get_gid() == "value"]
    assert "est 200.0 MiB / meas 210.0 MiB" in adamw8bit
    assert "= 12.55 GiB" in adamw8bit  # weights, agreeing
