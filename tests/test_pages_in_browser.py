"""The gallery and the report opened from the file system in headless Chromium: images load, the
drawn boxes are the detections above the slider's threshold, the toggles hide boxes, nothing goes
to the network, and names holding HTML show as text and run no script (issue 10)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from conftest import noisy_detections, perfect_detections, shapes_args, write_json
from kdeval.data.shapes import CATEGORIES
from kdeval.cli import app
from test_visualize import read_gallery

runner = CliRunner()
VIEWPORT = {"width": 1100, "height": 900}
# each one sets window.__pwned if the page ever runs it
CATEGORY_ATTACKS = ["<script>window.__pwned = 'category'</script>", "<img src=x onerror=\"window.__pwned='category img'\">"]
FILE_ATTACKS = ['q"uo\'te.png', '"><img src=x onerror=window.__pwned=1>.png']
MODEL_ATTACKS = ["<script>alert('model')</script>", "<b>bold</b>"]
FIGURE_ATTACK = "q\"uo'te <b>#1?.png"


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


class Opened:
    """A page opened from a file:// URL, with every request and script error it caused."""

    def __init__(self, browser, path, bypass_csp: bool = False, viewport=VIEWPORT):
        self.requests, self.errors, self.dialogs = [], [], []
        self.page = browser.new_page(viewport=viewport, bypass_csp=bypass_csp)
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")
        if (path.parent / "detections.js").is_file():  # a gallery: wait for its first boxes
            self.page.wait_for_selector("body[data-ready=true]", state="attached")

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def images_loaded(self) -> list[int]:
        """naturalWidth of every image, each scrolled into view first (the gallery loads lazily)."""
        widths = []
        for image in self.page.locator("img").all():
            image.scroll_into_view_if_needed()
            image.evaluate("img => img.complete || new Promise(done => { img.onload = img.onerror = done; })")
            widths.append(image.evaluate("img => img.naturalWidth"))
        return widths

    def assert_offline_and_clean(self):
        assert all(url.startswith("file://") for url in self.requests), self.requests
        assert not self.errors and not self.dialogs, (self.errors, self.dialogs)
        assert self.page.evaluate("window.__pwned") is None

    def close(self):
        self.page.close()


def expected_boxes(payload: dict, threshold: float, models=None) -> int:
    models = range(len(payload["models"])) if models is None else models
    return sum(1 for image in payload["images"] for m in models for d in image["detections"][m] if d[4] >= threshold)


@pytest.fixture
def gallery(tiny_shapes, tmp_path):
    gt = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    models = [f"baseline={write_json(tmp_path / 'b.json', noisy_detections(gt, 0))}",
              f"distilled={write_json(tmp_path / 'd.json', noisy_detections(gt, 2))}",
              f"teacher={write_json(tmp_path / 't.json', perfect_detections(gt))}"]
    out = tmp_path / "visualize"
    run("visualize", *models, *shapes_args(tiny_shapes), "--select", "random", "--num", 6,
        "--score-threshold", 0.3, "--out", out)
    return out


def test_gallery_draws_the_detections_above_the_threshold(browser, gallery, tmp_path):
    moved = tmp_path / "moved" / "gallery"  # the page works from wherever its folder is put
    shutil.copytree(gallery, moved)
    payload = read_gallery(moved)
    # tall enough that every panel is near the viewport, so every panel holds its boxes
    opened = Opened(browser, moved / "index.html", viewport={"width": 1100, "height": 2600})
    page = opened.page
    assert opened.count("section.row") == 6 and opened.count("figure.panel") == 18
    widths = opened.images_loaded()
    assert len(widths) == 18 and all(w == 64 for w in widths)

    drawn = opened.count("rect.det")
    assert drawn == expected_boxes(payload, 0.3) > 0
    assert page.evaluate("document.body.dataset.shown") == str(drawn)
    assert opened.count("rect.gt") == 3 * sum(len(image["gt"]) for image in payload["images"])  # in every panel
    assert opened.count("rect.det.correct") >= 1 and opened.count("rect.det.wrong") >= 1

    page.locator("#threshold").fill("0.6")  # the slider, as a user moves it
    page.wait_for_function("() => document.getElementById('threshold-value').textContent === '0.60'")
    assert opened.count("rect.det") == expected_boxes(payload, 0.6) < drawn
    page.locator("#threshold").focus()
    page.keyboard.press("End")
    page.wait_for_function("() => document.getElementById('threshold-value').textContent === '1.00'")
    assert opened.count("rect.det") == 0
    page.keyboard.press("Home")  # the slider's lower end: every detection in the page
    page.wait_for_function(f"() => document.body.dataset.drawn === '{expected_boxes(payload, payload['min_score'])}'")

    page.locator("#threshold").fill("0.3")
    page.wait_for_function(f"() => document.body.dataset.drawn === '{drawn}'")
    page.get_by_label("ground truth").uncheck()
    page.wait_for_function("() => document.querySelectorAll('rect.gt').length === 0")
    page.locator("input.show-model[data-model='2']").uncheck()  # the teacher's boxes go, the others stay
    page.wait_for_function(f"() => document.body.dataset.drawn === '{expected_boxes(payload, 0.3, [0, 1])}'")
    assert opened.count("figure.panel[data-model='2'] rect.det") == 0
    assert page.locator("figure.panel[data-model='2'] .count").first.text_content() == "hidden"
    page.locator("input.show-model[data-model='2']").check()
    page.get_by_label("ground truth").check()
    page.wait_for_function(f"() => document.body.dataset.drawn === '{drawn}'")

    label = page.locator("figure.panel[data-model='2'] text.label").first.text_content()
    assert label.split()[0] in {category["name"] for category in CATEGORIES}
    assert float(label.split()[1]) == pytest.approx(0.9)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / "gallery.png"))
    opened.assert_offline_and_clean()
    opened.close()


def test_gallery_draws_panels_as_they_scroll_near(browser, gallery):
    """Only panels near the viewport hold SVG (a 500-image gallery stays light); the counts in the
    captions and the header cover every panel all along."""
    payload = read_gallery(gallery)
    opened = Opened(browser, gallery / "index.html", viewport={"width": 1100, "height": 400})
    page = opened.page
    last_row = page.locator("section.row").last
    first_row = page.locator("section.row").first
    assert last_row.locator("rect.det").count() == 0 < first_row.locator("rect.det").count()
    assert page.evaluate("document.body.dataset.shown") == str(expected_boxes(payload, 0.3))
    page.locator("#threshold").fill("0.5")  # while the last row is out of sight
    last_row.scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelector('section.row:last-of-type rect.det') !== null")
    expected_last = sum(1 for d in payload["images"][-1]["detections"][2] if d[4] >= 0.5)
    assert last_row.locator("figure.panel[data-model='2'] rect.det").count() == expected_last
    page.wait_for_function("() => document.querySelector('section.row:first-of-type rect.det') === null")
    opened.assert_offline_and_clean()
    opened.close()


@pytest.fixture
def hostile_run(tiny_shapes, tmp_path):
    """A dataset whose category and file names, and models whose names, are HTML, through
    evaluate, visualize and report."""
    coco = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    images = tmp_path / "images"
    images.mkdir()
    for image, name in zip(coco["images"], FILE_ATTACKS + [None] * len(coco["images"])):
        source = tiny_shapes / "val" / image["file_name"]
        image["file_name"] = name or image["file_name"]
        shutil.copy(source, images / image["file_name"])
    for category, name in zip(coco["categories"], CATEGORY_ATTACKS):
        category["name"] = name
    annotations = write_json(tmp_path / "hostile.json", coco)
    data = ["--images", images, "--annotations", annotations]
    first = write_json(tmp_path / "a.json", noisy_detections(coco, 0))
    second = write_json(tmp_path / "b.json", perfect_detections(coco))
    run_dir = tmp_path / "run"
    run("evaluate", f"{MODEL_ATTACKS[0]}={first}", f"{MODEL_ATTACKS[1]}={second}", *data, "--out", run_dir / "evaluate")
    run("visualize", first, second, *data, "--names", ",".join(MODEL_ATTACKS), "--select", ",".join(
        str(i["id"]) for i in coco["images"][:3]), "--score-threshold", 0.0, "--min-score", 0.0, "--out", run_dir / "visualize")
    robustness = run_dir / "robustness"  # a figure whose file name holds quotes and markup
    robustness.mkdir()
    shutil.copy(images / FILE_ATTACKS[0], robustness / FIGURE_ATTACK)
    (robustness / "table.md").write_text(f"## {CATEGORY_ATTACKS[0]}\n\n| model | mPC |\n|---|---:|\n| {MODEL_ATTACKS[0]} | 1.0 |\n")
    run("report", run_dir)
    return run_dir


@pytest.mark.parametrize("bypass_csp", [False, True], ids=["with-csp", "escaping-alone"])
def test_names_holding_html_show_as_text_and_run_nothing(browser, hostile_run, tmp_path, bypass_csp):
    """Escaping keeps the names text; the pages' Content-Security-Policy is only a second line, so
    the test also runs with the browser ignoring it."""
    opened = Opened(browser, hostile_run / "visualize" / "index.html", bypass_csp)
    page = opened.page
    assert all(w > 0 for w in opened.images_loaded())  # quotes in file names do not break the copies
    headings = page.locator("section.row h2 .file-name").all_text_contents()
    assert headings[:2] == FILE_ATTACKS
    labels = " ".join(page.locator("text.label").all_text_contents())
    titles = " ".join(page.locator("rect.gt title").all_text_contents())
    for attack in CATEGORY_ATTACKS:
        assert attack in labels or attack in titles
    for name in MODEL_ATTACKS:
        assert page.locator("figcaption .model", has_text=name).count() == 3
        assert page.locator("label", has_text=name).count() == 1
    assert page.locator("header b").count() == 0  # '<b>bold</b>' is text, not markup
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / "hostile_gallery.png"))
    opened.assert_offline_and_clean()
    opened.close()

    opened = Opened(browser, hostile_run / "index.html", bypass_csp)
    table_text = opened.page.locator("#evaluate table").first.text_content()
    assert all(name in table_text for name in MODEL_ATTACKS)
    assert CATEGORY_ATTACKS[0] in opened.page.locator("#robustness h4").first.text_content()
    assert MODEL_ATTACKS[0] in opened.page.locator("#robustness table").first.text_content()
    assert opened.page.locator("main b").count() == 0
    figure = opened.page.locator("#robustness figure img")
    assert figure.get_attribute("alt") == FIGURE_ATTACK[:-4] and opened.images_loaded() and figure.evaluate("i => i.naturalWidth") > 0
    opened.assert_offline_and_clean()
    opened.close()


def test_report_page_links_figures_and_opens_the_gallery(browser, tiny_shapes, gallery, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(gallery, run_dir / "visualize")
    gt = tiny_shapes / "annotations" / "instances_val.json"
    perfect = write_json(tmp_path / "p.json", perfect_detections(json.loads(gt.read_text())))
    run("errors", f"oracle={perfect}", "--annotations", gt, "--out", run_dir / "errors", "--no-progress")
    run("report", run_dir)
    opened = Opened(browser, run_dir / "index.html")
    page = opened.page
    for details in page.locator("details").all():  # unfold the folded figures so they load
        details.evaluate("d => d.open = true")
    widths = opened.images_loaded()
    assert len(widths) >= 3 and all(w > 0 for w in widths)
    pdf_links = page.locator("figcaption a", has_text="PDF")
    assert pdf_links.count() >= 2
    for href in pdf_links.evaluate_all("links => links.map(a => a.getAttribute('href'))"):
        assert (run_dir / href).is_file()
    assert page.locator("#missing li", has_text="evaluate/").count() == 1
    assert page.locator("#missing li", has_text="robustness/").count() == 1
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    page.locator("a", has_text="Open the qualitative gallery").click()
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("rect.det").count() > 0
    opened.assert_offline_and_clean()
    opened.close()


def test_report_tables_sort_by_a_clicked_column(browser, tiny_coco, tmp_path):
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    good = write_json(tmp_path / "good.json", perfect_detections(tiny_coco))
    half = write_json(tmp_path / "half.json", [d for d in perfect_detections(tiny_coco) if d["category_id"] == 1])
    run_dir = tmp_path / "run"
    run("evaluate", f"half={half}", f"good={good}", "--annotations", gt, "--baseline", "half", "--per-class",
        "--out", run_dir / "evaluate")
    run("report", run_dir)
    opened = Opened(browser, run_dir / "index.html")
    page = opened.page
    table = page.locator("table", has=page.locator("th", has_text="category")).first
    first_cells = lambda: table.locator("tbody tr td:first-child").all_text_contents()  # noqa: E731
    before = first_cells()
    assert before == ["cat (1)", "dog (2)"]
    half_column = table.locator("thead th").filter(has_text=re.compile(r"^half$"))
    half_column.click()  # descending: cat (100.0 [100.0, 100.0]) before dog (0.0 [0.0, 0.0]): by the leading number
    assert first_cells() == ["cat (1)", "dog (2)"] and half_column.get_attribute("aria-sort") == "descending"
    half_column.click()  # ascending
    assert first_cells() == ["dog (2)", "cat (1)"] and half_column.get_attribute("aria-sort") == "ascending"
    opened.assert_offline_and_clean()
    opened.close()
