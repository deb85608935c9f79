"""The verdict sentence and the Pareto front on hand-made points: each branch of the rule."""
from ngl_profile.quality.verdict import Point, pareto_front, verdict
from ngl_profile.zoo.gpus import GiB


def P(label, loss, band, gib, seeds=3):
    return Point(label, loss, band, int(gib * GiB), seeds)


def test_separated_best_is_named_alone():
    pts = [P("adamw", 2.10, (2.09, 2.11), 2.0), P("galore", 2.00, (1.99, 2.01), 1.0)]
    text = verdict(pts)
    assert text.startswith("galore [2.0000 nats/byte, IQR 1.9900–2.0100 over 3 seeds, 1 GiB at the peak]")
    assert "apart from every other case's" in text


def test_overlapping_goes_to_the_lightest():
    pts = [P("ngl s=10", 2.00, (1.98, 2.02), 1.5), P("galore", 2.01, (1.99, 2.03), 1.0),
           P("adamw", 2.30, (2.29, 2.31), 3.0)]
    text = verdict(pts)
    assert text.startswith("galore [") and "lowest held-out loss per GiB" in text
    assert "lowest median, ngl s=10 [" in text and "adamw" not in text


def test_best_is_also_lightest():
    pts = [P("ngl int8", 2.00, (1.98, 2.02), 1.0), P("ngl f32", 2.01, (1.99, 2.03), 1.5)]
    text = verdict(pts)
    assert text.startswith("ngl int8 [") and "(ngl f32)" in text


def test_one_seed_claims_nothing():
    assert "no difference between optimizers can be claimed" in verdict([P("a", 2.0, None, 1.0, seeds=1),
                                                                         P("b", 2.1, None, 0.5, seeds=1)])


def test_diverged_cases_are_said():
    text = verdict([P("a", 2.0, (1.9, 2.1), 1.0), P("b", None, None, 0.5)])
    assert "b diverged" in text
    assert "none can be named" in verdict([P("b", None, None, 0.5)])


def test_pareto_front():
    pts = [P("heavy-best", 1.9, None, 3.0), P("dominated", 2.2, None, 2.5), P("light", 2.0, None, 1.0),
           P("lightest", 2.1, None, 0.5)]
    assert [p.label for p in pareto_front(pts)] == ["lightest", "light", "heavy-best"]
