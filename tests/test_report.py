"""`kdeval report` without a browser: the Markdown and CSV tables it reads, what it gathers from a
run folder and what it lists as missing. The page itself is opened in Chromium in
test_pages_in_browser.py."""

from __future__ import annotations

from conftest import shapes_args
from kdeval.report.run_report import csv_block, markdown_blocks
from test_visualize import assert_user_error, run



def test_markdown_and_csv_tables():
    blocks = markdown_blocks("### all objects\n\n| model | AP |\n|---|---:|\n| a\\|b | 1.0 (+2) |\nA note.\n")
    assert [b.kind for b in blocks] == ["heading", "table", "text"]
    assert blocks[1].header == ("model", "AP") and blocks[1].rows == (("a|b", "1.0 (+2)"),)
    assert blocks[1].numeric == (False, True)
    assert markdown_blocks("| x |\n| 1 | 2 |")[0].rows == (("1",),)  # rows cut to the header's width
    # the robustness summary's bold title and italic notes: markers removed, the emphasis kept
    title, note, plain, odd = markdown_blocks("**Robustness on val**\n*PARTIAL mPC: 15 of 75*\nA 2*3 note\n**x*\n")
    assert (title.text, title.emphasis) == ("Robustness on val", "strong")
    assert (note.text, note.emphasis) == ("PARTIAL mPC: 15 of 75", "em")
    assert (plain.text, plain.emphasis) == ("A 2*3 note", "") and (odd.text, odd.emphasis) == ("**x*", "")


def test_csv_block_previews_long_files(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n" + "".join(f"{i},x{i}\n" for i in range(50)))
    block, count = csv_block(path, max_rows=5)
    assert count == 50 and len(block.rows) == 5 and block.numeric == (True, False)


def test_report_gathers_a_run_and_lists_what_is_missing(tiny_shapes, shapes_models, tmp_path):
    _, models = shapes_models
    data = shapes_args(tiny_shapes)
    run_dir = tmp_path / "study"
    assert run("evaluate", *models, *data, "--baseline", "first", "--out", run_dir / "evaluate").exit_code == 0
    assert run("visualize", *models, *data, "--num", 2, "--out", run_dir / "visualize").exit_code == 0
    robustness = run_dir / "robustness"
    robustness.mkdir()
    (robustness / "mpc.md").write_text("| model | mPC |\n|---|---:|\n| first | 10.0 |\n")
    (robustness / "mpc_by_severity.png").write_bytes((tiny_shapes / "val" / "000000.png").read_bytes())
    result = run("report", run_dir)
    assert result.exit_code == 0, result.output
    assert "errors/: missing" in result.stdout and "robustness/: 1 table, 1 figure" in result.stdout
    page = (run_dir / "index.html").read_text()
    assert 'href="evaluate/ap_table.csv"' in page and "mpc_by_severity" in page
    assert 'href="visualize/index.html"' in page and "errors/: not found" in page
    assert "PNG only" in page  # the robustness figure has no PDF beside it
    assert "visualize/images/" not in page  # the gallery's copies of the images are not figures
    assert "torchvision" in page  # versions


def test_report_of_nothing_is_an_error(tmp_path):
    assert_user_error(run("report", tmp_path / "absent"), "not found")
    assert_user_error(run("report", tmp_path), "nothing to report")
