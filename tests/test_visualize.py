"""`kdeval visualize` without a browser: the selection strategies on counts checked by hand, the
files the gallery writes, and bad input → exit 2. The page itself is opened in Chromium in
test_pages_in_browser.py."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import shapes_args, write_json
from kdeval.cli import app
from kdeval.analysis.gallery import parse_selection
from kdeval.metrics.matching import match_detections
from kdeval.metrics.selection import count_images, select_images

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("kdeval: error:") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def read_gallery(folder) -> dict:
    text = (folder / "detections.js").read_text(encoding="utf-8")
    prefix = 'window["KDEVAL_GALLERY"] = '
    assert text.startswith(prefix) and text.rstrip().endswith(";")
    return json.loads(text[len(prefix):].rstrip().rstrip(";"))


# ---------------------------------------------------------------- selection, by hand


def hand_problem():
    """Image 1: two small objects; image 2: one large; image 3: none. Model a finds one of image 1's
    objects; model b finds both, and adds a background box on image 3."""
    gt = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in (1, 2, 3)],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400},
            {"id": 21, "image_id": 2, "category_id": 1, "bbox": [0, 0, 150, 150], "area": 22500},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    a = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
         {"image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.1},  # below the threshold
         {"image_id": 2, "category_id": 1, "bbox": [0, 0, 150, 150], "score": 0.8}]
    b = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
         {"image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.7},
         {"image_id": 2, "category_id": 1, "bbox": [0, 0, 150, 150], "score": 0.8},
         {"image_id": 3, "category_id": 1, "bbox": [5, 5, 20, 20], "score": 0.6}]
    detections = {"a": a, "b": b}
    matches = {name: match_detections(gt, dets) for name, dets in detections.items()}
    return count_images(gt, detections, matches, score_threshold=0.3)


def test_counts_by_hand():
    counts = hand_problem()
    assert counts.objects.loc[1, ["all", "small", "medium", "large"]].tolist() == [2, 2, 0, 0]
    assert counts.objects.loc[2, "large"] == 1 and counts.objects.loc[3, "all"] == 0
    assert counts.correct["a"].tolist() == [1, 1, 0] and counts.correct["b"].tolist() == [2, 1, 0]
    assert counts.wrong["b"].tolist() == [0, 0, 1]
    assert counts.disagreement.tolist() == [1, 0, 1]  # image 1: one object found by b only; image 3: b's extra box
    table = counts.table()
    assert {"objects_small", "correct_a", "wrong_b", "disagreement"} <= set(table.columns)


def test_each_strategy_by_hand():
    counts = hand_problem()
    assert select_images(counts, "improved", 5) == [(1, "b +1 correct against a")]
    assert select_images(counts, "degraded", 5) == []  # b never finds fewer: nothing qualifies
    assert select_images(counts, "small", 5) == [(1, "2 small of 2 objects")]
    assert select_images(counts, "large", 5) == [(2, "1 large of 1 object")]
    assert [i for i, _ in select_images(counts, "disagreement", 5)] == [1, 3]
    assert [i for i, _ in select_images(counts, "disagreement", 1)] == [1]
    assert select_images(counts, "ids", 1, image_ids=(3, 1, 3)) == [(3, "chosen by id"), (1, "chosen by id")]
    once, again = select_images(counts, "random", 2, seed=4), select_images(counts, "random", 2, seed=4)
    assert once == again and len(once) == 2 and [i for i, _ in once] == sorted(i for i, _ in once)


def test_selection_refuses_what_cannot_be_done():
    counts = hand_problem()
    with pytest.raises(Exception, match="image id 9"):
        select_images(counts, "ids", 3, image_ids=(9,))
    single = count_images({"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "x"}]},
                          {"only": []}, {"only": []}, 0.5)
    with pytest.raises(Exception, match="at least two"):
        select_images(single, "improved", 3)


def test_parse_selection():
    assert parse_selection(None, 3) == ("improved", ())
    assert parse_selection(None, 1) == ("random", ())
    assert parse_selection("large", 2) == ("large", ())
    assert parse_selection("12, 57,3", 2) == ("ids", (12, 57, 3))
    with pytest.raises(Exception, match="expected one of"):
        parse_selection("best", 2)


# ---------------------------------------------------------------- the command


def test_help_of_visualize_and_report():
    for command in ("visualize", "report"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output
    assert "visualize" in run("--help").output and "report" in run("--help").output


def test_visualize_writes_a_movable_gallery(tiny_shapes, shapes_models, tmp_path):
    gt, models = shapes_models
    out = tmp_path / "vis"
    result = run("visualize", *models, *shapes_args(tiny_shapes), "--select", "random", "--num", 4, "--out", out)
    assert result.exit_code == 0, result.output
    payload = read_gallery(out)
    assert payload["models"] == ["first", "second", "third"] and len(payload["images"]) == 4
    for image in payload["images"]:
        assert image["src"] == f"images/{image['id']}.png" and (out / image["src"]).is_file()
        assert len(image["detections"]) == 3
        for model_detections in image["detections"]:
            scores = [d[4] for d in model_detections]
            assert scores == sorted(scores, reverse=True) and min(scores, default=1) >= payload["min_score"]
        assert all(d[6] == 0 for d in image["detections"][1])  # perfect detections: all correct
    page = (out / "index.html").read_text()
    assert "data:image" not in page and "base64" not in page  # images referenced, never inlined
    assert 'src="detections.js"' in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    settings = json.loads((out / "visualize_settings.json").read_text())
    assert settings["select"] == "random" and settings["shown_image_ids"] == [i["id"] for i in payload["images"]]
    assert "torch" in settings["versions"]
    selection = (out / "selection.csv").read_text().splitlines()
    assert selection[0].startswith("image_id,shown_rank,objects_all") and len(selection) == 1 + len(gt["images"])
    assert [line.split(",")[1] for line in selection[1:5]] == ["1", "2", "3", "4"]  # the shown images first

    # moved elsewhere, the folder still holds everything the page needs
    moved = shutil.move(str(out), tmp_path / "moved")
    assert {p.name for p in (tmp_path / "moved").iterdir()} >= {"index.html", "detections.js", "images"}
    assert moved

    # a second gallery in the same folder removes the images the first showed and it does not
    again = run("visualize", *models, *shapes_args(tiny_shapes), "--select", str(payload["images"][0]["id"]),
                "--out", tmp_path / "moved")
    assert again.exit_code == 0, again.output
    assert [p.name for p in (tmp_path / "moved" / "images").iterdir()] == [f"{payload['images'][0]['id']}.png"]


def test_visualize_improved_picks_images_where_the_second_model_gains(tiny_shapes, shapes_models, tmp_path):
    _, models = shapes_models
    out = tmp_path / "vis"
    result = run("visualize", *models, *shapes_args(tiny_shapes), "--select", "improved", "--num", 50, "--out", out)
    assert result.exit_code == 0, result.output
    payload = read_gallery(out)
    gains = [int(image["reason"].split()[1]) for image in payload["images"]]
    assert gains and all(g > 0 for g in gains) and gains == sorted(gains, reverse=True)
    assert "note: only" in result.stdout  # fewer qualify than --num asked for
    assert "reaches --score-threshold" not in result.stdout
    # a threshold above every score of the noisy models (0.87 at most): the note says why they count nothing
    strict = run("visualize", *models, *shapes_args(tiny_shapes), "--select", "improved", "--num", 50,
                 "--score-threshold", 0.88, "--min-score", 0.5, "--out", tmp_path / "strict")
    assert strict.exit_code == 0, strict.output
    assert "no detection of first, third reaches --score-threshold 0.88 (best 0.870, 0.870)" in strict.stdout


def test_visualize_runs_a_checkpoint(tiny_shapes, trained, tmp_path):
    result = run("visualize", trained, *shapes_args(tiny_shapes), "--names", "tiny", "--num", 2,
                 "--min-score", 0.0, "--score-threshold", 0.0, "--out", tmp_path / "v", "--no-progress", "--device", "cpu")
    assert result.exit_code == 0, result.output
    payload = read_gallery(tmp_path / "v")
    assert payload["models"] == ["tiny"] and len(payload["images"]) == 2


def test_visualize_bad_input(tiny_shapes, shapes_models, tmp_path):
    _, models = shapes_models
    data = shapes_args(tiny_shapes)
    assert_user_error(run("visualize", *models, *data, "--names", "a,b"), "--names", "expected 3")
    assert_user_error(run("visualize", *models, *data, "--names", "a,b,a"), "must differ")
    assert_user_error(run("visualize", *models, *data, "--select", "best"), "--select best", "improved")
    assert_user_error(run("visualize", *models, *data, "--select", "424242"), "image id 424242")
    assert_user_error(run("visualize", models[0], *data, "--select", "improved"), "at least two")
    assert_user_error(run("visualize", *models, *data, "--min-score", 0.5, "--score-threshold", 0.3), "--min-score")
    assert_user_error(run("visualize", *models, "--annotations", tiny_shapes / "annotations" / "instances_val.json"),
                      "needs the images")


@pytest.mark.parametrize("file_name", ["../../secret.png", "/etc/hostname"])
def test_visualize_copies_no_file_from_outside_the_images_folder(tiny_shapes, shapes_models, tmp_path, file_name):
    gt, models = shapes_models
    gt["images"][0]["file_name"] = file_name
    annotations = write_json(tmp_path / "escaping.json", gt)
    out = tmp_path / "out"
    result = run("visualize", *models, "--images", tiny_shapes / "val", "--annotations", annotations,
                 "--select", gt["images"][0]["id"], "--out", out)
    assert_user_error(result, file_name, "outside the images folder")
    # the output folder was checked and locked up front; nothing was written into it
    assert [p.name for p in out.rglob("*")] == [".kdeval.lock"]
