"""The HTML report: self-contained (no URL leaves the file), every cell and figure, the table."""

from html.parser import HTMLParser

import pytest
from test_plots import STUDY, histories, make_results

from bench.plots import build_figures
from bench.report import build_report, config_diff, markdown_table_html
from bench.study import load_study


class Page(HTMLParser):
    """Every tag's attributes, the text of table rows, ids."""

    def __init__(self):
        super().__init__()
        self.attrs: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.attrs.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture
def page(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(STUDY)
    study = load_study(str(path), ["train.steps=7"])
    results = make_results(tmp_path)
    results.meta["overrides"] = ["train.steps=7"]
    figures = build_figures(results, study, histories(results))
    text = build_report(results, study, figures, ["--results", "elsewhere"])
    parsed = Page()
    parsed.feed(text)
    return text, parsed, figures, results


def test_no_url_leaves_the_file(page):
    text, parsed, _, _ = page
    for tag, attrs in parsed.attrs:
        for key in ("src", "href", "action", "data"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:", "#")), (tag, key, value)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "@import" not in text and "url(" not in text


def test_every_figure_is_inlined(page):
    _, parsed, figures, _ = page
    ids = {a.get("id") for _, a in parsed.attrs}
    for stem in figures:
        assert f"figure-{stem}" in ids
    images = [a["src"] for tag, a in parsed.attrs if tag == "img"]
    assert len(images) == len(figures)
    assert all(src.startswith("data:image/png;base64,") for src in images)


def test_every_cell_is_listed_with_its_changes_from_base(page):
    text, parsed, _, results = page
    rows = [a for tag, a in parsed.attrs if tag == "tr" and a.get("class") == "cell"]
    assert len(rows) == len(results.frame)
    for cell in results.frame["cell"]:
        assert f"<td>{cell}</td>" in text
    assert "metric.weight = 0.5" in text  # a grid value differing from the base default
    assert (
        "train.steps"
        not in "".join(parsed.text).split("Changes from base")[1].split("The base configuration")[0]
    )  # --set values are part of the base


def test_the_results_table_and_reproduction(page):
    text, _, _, _ = page
    assert "DDPM (eps)" in text and "Cas-DM" in text and "FID ↓" in text
    assert "<strong>" in text  # best per column
    assert "bench run --study" in text and "--set train.steps=7" in text
    assert "--results elsewhere" in text
    assert "git commit" in text and "torch" in text


def test_markdown_table_keeps_bold_italics_and_escaped_pipes():
    markdown = (
        "**Table (x).** A caption.\n\n| A | B ↓ |\n| :-- | --: |\n"
        "| a \\| b | **1.0** |\n| *Real data* | 2 <3 |\n"
    )
    table = markdown_table_html(markdown)
    assert table["caption"] == "Table (x). A caption."
    assert table["header"] == ["A", "B ↓"]
    assert table["align"] == ["", "r"]
    assert table["rows"] == [["a | b", "<strong>1.0</strong>"], ["<em>Real data</em>", "2 &lt;3"]]


def test_config_diff_is_against_the_base(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(STUDY)
    study = load_study(str(path))
    diff = dict(config_diff(study, {"architecture.name": "ddpm", "metric.weight": 1.0, "seed": 2}))
    assert diff == {"architecture.name": "ddpm", "seed": "2"}


def test_markdown_escapes_do_not_reach_the_html():
    from bench.report import markdown_table_html

    pieces = markdown_table_html(
        "**Table (digits\\_ablation).** a\\_b caption\n\n| Model | FID |\n| :-- | --: |\n"
        "| x0\\_ddpm | **1.00** |"
    )
    assert pieces["caption"] == "Table (digits_ablation). a_b caption"
    assert pieces["rows"] == [["x0_ddpm", "<strong>1.00</strong>"]]
