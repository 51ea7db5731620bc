"""SVG charts: well-formed, accessible, escaped, and drawn from the numbers given."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from triage.governance import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(str(svg))  # noqa: S314 - our own output


def test_line_chart_is_an_accessible_image_with_title_and_data_in_its_description():
    svg = parse(
        charts.line_chart(title="Positive rate", x_labels=["d1", "d2"], series=[charts.Series("rate", [0.1, 0.3])])
    )
    assert svg.get("role") == "img"
    title, desc = svg.find(f"{SVG}title"), svg.find(f"{SVG}desc")
    assert title.text == "Positive rate"
    assert set(svg.get("aria-labelledby").split()) == {title.get("id"), desc.get("id")}
    assert "d1: 0.1" in desc.text
    assert "d2: 0.3" in desc.text


def test_line_chart_breaks_the_line_where_a_value_is_missing():
    svg = parse(charts.line_chart(title="t", x_labels=list("abcde"), series=[charts.Series("s", [1, 2, None, 3, 4])]))
    assert len(svg.findall(f"{SVG}polyline")) == 2
    assert len(svg.findall(f"{SVG}circle")) == 4


def test_line_chart_draws_the_reference_line_at_its_value():
    svg = parse(
        charts.line_chart(title="PSI", x_labels=["a", "b"], series=[charts.Series("psi", [0.0, 0.5])], reference=0.25)
    )
    ref = [line for line in svg.findall(f"{SVG}line") if line.get("stroke") == "#ff5a4f"]
    assert len(ref) == 1
    y = float(ref[0].get("y1"))
    top, bottom = charts.TOP, charts.HEIGHT - charts.BOTTOM
    y_max = charts.nice_ticks(0, 0.5)[-1]
    assert abs(y - (bottom - (bottom - top) * 0.25 / y_max)) < 0.1


def test_text_is_escaped():
    svg = charts.bar_chart(title="<script>x</script>", categories=["a&b"], series=[charts.Series("n", [1])])
    assert "<script>" not in svg
    assert parse(svg).find(f"{SVG}title").text == "<script>x</script>"


def test_bar_chart_stacks_series_to_the_category_total():
    svg = parse(
        charts.bar_chart(title="t", categories=["a"], series=[charts.Series("x", [2]), charts.Series("y", [3])])
    )
    heights = [float(r.get("height")) for r in svg.findall(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(heights) == 2
    assert abs(heights[1] / heights[0] - 1.5) < 0.01  # coordinates are rounded to 0.1 px


def test_histogram_draws_one_bar_per_bin_and_the_baseline_outline():
    svg = parse(charts.histogram_chart(title="h", edges=[0, 0.5, 1], counts=[3, 1], baseline=[1, 1]))
    bars = [r for r in svg.findall(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(bars) == 2
    assert "75.0%" in bars[0].find(f"{SVG}title").text
    assert len(svg.findall(f"{SVG}polyline")) == 1


def test_roc_chart_plots_every_point_and_marks_the_operating_point():
    svg = parse(charts.roc_chart(title="ROC", fpr=[0, 0.5, 1], tpr=[0, 0.8, 1], point=(0.5, 0.8)))
    curve = list(svg.findall(f"{SVG}polyline"))
    assert len(curve[0].get("points").split()) == 3
    assert svg.find(f"{SVG}circle").find(f"{SVG}title").text == "current threshold"


def test_empty_data_says_so():
    svg = parse(charts.line_chart(title="t", x_labels=[], series=[]))
    assert svg.find(f"{SVG}desc").text == "No data yet."


def test_nice_ticks_cover_the_range_in_round_steps():
    assert charts.nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]
    assert charts.nice_ticks(0, 37)[-1] >= 37
