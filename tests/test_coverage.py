"""Coverage spans: merged, queried, trimmed."""

from __future__ import annotations

from backend.model.coverage import Coverage


def test_touching_and_overlapping_spans_merge() -> None:
    cov = Coverage()
    cov.add(10, 20)
    cov.add(21, 30)
    cov.add(50, 60)
    cov.add(25, 55)
    assert cov.spans() == [(10, 60)]


def test_span_at_and_end_before() -> None:
    cov = Coverage([(10, 20), (40, 50)])
    assert cov.span_at(15) == (10, 20)
    assert cov.span_at(30) is None
    assert cov.end_before(39) == 20
    assert cov.end_before(10) is None


def test_remove_before_trims_a_span() -> None:
    cov = Coverage([(10, 20), (40, 50)])
    cov.remove_before(45)
    assert cov.spans() == [(45, 50)]


def test_remove_from_forgets_every_span_from_a_time_on() -> None:
    cov = Coverage([(10, 20), (40, 50), (60, 70)])
    cov.remove_from(45)
    assert cov.spans() == [(10, 20), (40, 44)]
    cov.remove_from(40)
    assert cov.spans() == [(10, 20)]
    cov.remove_from(21)
    assert cov.spans() == [(10, 20)]
    cov.remove_from(0)
    assert cov.spans() == []
