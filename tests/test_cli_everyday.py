"""``efficientvim predict / visualize / info`` driven as a user would: subprocesses on real photos.

A tiny EfficientViM with random, well-scaled weights is saved with class names; the commands must
print exactly what that model computes in-process with timm's preprocessing of the same file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

import efficientvim
from conftest import randomize_
from efficientvim.cli import main

CLASSES = ["tabby", "astronaut", "coffee cup", "rocket", "teapot"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "efficientvim", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    model = efficientvim.create_model(
        "efficientvim_m1", embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4), num_classes=5
    )
    randomize_(model, seed=3)
    return efficientvim.save_weights(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", CLASSES)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, ext in (("chelsea", "jpg"), ("astronaut", "png"), ("coffee", "jpg")):
        paths[name] = folder / "sub" / f"{name}.{ext}" if name == "coffee" else folder / f"{name}.{ext}"
        paths[name].parent.mkdir(exist_ok=True)
        Image.fromarray(getattr(data, name)()).save(paths[name])
    return paths


@torch.no_grad()
def expected_probs(checkpoint: Path, images: list[Image.Image]) -> torch.Tensor:
    """What the model computes in this process: timm's transform for its config, softmax of the logits."""
    model = efficientvim.load_model(checkpoint).eval()
    transform = create_transform(**resolve_model_data_config(model))
    return model(torch.stack([transform(im.convert("RGB")) for im in images])).softmax(-1)


def test_predict_prints_the_models_own_top_k_for_a_folder_of_photos(tiny_checkpoint, photos):
    result = run_cli("predict", str(photos["chelsea"].parent), "--checkpoint", str(tiny_checkpoint), "--topk", "3")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr  # the weights are a checkpoint's, not random
    order = ["astronaut", "chelsea", "coffee"]  # sorted paths; coffee sits in a subfolder
    probs = expected_probs(tiny_checkpoint, [Image.open(photos[n]) for n in order])
    blocks = result.stdout.strip().split("\n" + str(photos["chelsea"].parent))
    assert len(blocks) == 3
    for name, block, p in zip(order, blocks, probs):
        lines = block.splitlines()
        assert lines[0].endswith(photos[name].name)
        values, indices = p.topk(3)
        for rank, (line, value, index) in enumerate(zip(lines[1:], values, indices), start=1):
            got_rank, got_pct, *label = line.split()
            assert int(got_rank) == rank
            assert " ".join(label) == CLASSES[index]
            assert abs(float(got_pct.rstrip("%")) - 100 * float(value)) < 0.006


def odd_mode_images(rgb: Image.Image) -> dict[str, tuple[Image.Image, Image.Image, str]]:
    """name -> (the file's content, the RGB image a person sees in it, file suffix)."""
    gray = rgb.convert("L")
    half_clear = rgb.convert("RGBA")
    alpha = np.full(rgb.size[::-1], 255, np.uint8)
    alpha[:, : rgb.width // 2] = 0
    half_clear.putalpha(Image.fromarray(alpha))
    white_left = np.asarray(rgb).copy()
    white_left[:, : rgb.width // 2] = 255
    cmyk = rgb.convert("CMYK")
    palette = rgb.convert("P")
    deep = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)  # 16-bit, same picture as gray
    rotated = rgb.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: display rotated 90 degrees clockwise, which undoes ROTATE_90
    return {
        "gray": (gray, gray.convert("RGB"), "png"),
        "rgba": (half_clear, Image.fromarray(white_left), "png"),
        "cmyk": (cmyk, cmyk.convert("RGB"), "tif"),
        "palette": (palette, palette.convert("RGB"), "gif"),
        "16bit": (deep, gray.convert("RGB"), "png"),
        "exif": ((rotated, exif), rgb, "png"),
    }


def test_predict_json_reads_every_image_mode_as_a_person_sees_it(tiny_checkpoint, photos, tmp_path):
    rgb = Image.open(photos["chelsea"]).convert("RGB")
    cases = odd_mode_images(rgb)
    for name, (content, _, ext) in cases.items():
        if isinstance(content, tuple):
            content[0].save(tmp_path / f"{name}.{ext}", exif=content[1])
        else:
            content.save(tmp_path / f"{name}.{ext}")
    assert Image.open(tmp_path / "16bit.png").mode.startswith("I")
    result = run_cli("predict", str(tmp_path / "*.*"), "--checkpoint", str(tiny_checkpoint), "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert len(entries) == len(cases)
    by_name = {Path(e["image"]).stem: e["predictions"] for e in entries}
    probs = expected_probs(tiny_checkpoint, [seen for _, seen, _ in cases.values()])
    for name, p in zip(cases, probs):
        preds = by_name[name]
        got = [q["probability"] for q in preds]
        assert got == sorted(got, reverse=True) and sum(got) <= 1 + 1e-6
        assert [q["rank"] for q in preds] == [1, 2, 3, 4, 5]
        assert [q["label"] for q in preds] == [CLASSES[i] for i in p.argsort(descending=True)], name
        assert got == pytest.approx(sorted(p.tolist(), reverse=True), abs=1e-5), name


def test_predict_uses_imagenet_names_and_warns_without_weights(photos, capsys):
    from timm.data import ImageNetInfo

    assert main(["predict", str(photos["chelsea"]), "--model", "efficientvim_m1", "--topk", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert "random weights" in captured.err
    info = ImageNetInfo()
    for p in json.loads(captured.out)[0]["predictions"]:
        assert p["label"] == info.index_to_description(p["index"])


def test_visualize_writes_a_png_of_the_documented_size(tiny_checkpoint, photos, tmp_path):
    from efficientvim.viz import FIGURE_SIZE_PX

    out = tmp_path / "states.png"
    result = run_cli("visualize", str(photos["astronaut"]), "--checkpoint", str(tiny_checkpoint), "-o", str(out))
    assert result.returncode == 0, result.stderr
    picture = Image.open(out)
    assert picture.format == "PNG" and picture.size == FIGURE_SIZE_PX == (1600, 1000)
    # the photo is drawn in it: many distinct colours, not an empty canvas
    assert len(np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0)) > 5000


def test_visualize_at_a_small_input_says_which_stages_have_too_few_tokens_to_draw(tiny_checkpoint, photos, tmp_path):
    """At 64 px stage 2 has 2x2 tokens and stage 3 one: their states all read the same tokens; no row of near
    copies is drawn, and the user is told how to see them."""
    out = tmp_path / "small.png"
    result = run_cli("visualize", str(photos["astronaut"]), "--checkpoint", str(tiny_checkpoint), "-o", str(out),
                     "--img-size", "64")
    assert result.returncode == 0 and out.exists()
    assert result.stderr.splitlines() == [
        "note: at 64x64 the maps of stage 2 (2x2), stage 3 (1x1) have too few tokens to differ and are not drawn: a "
        "larger --img-size (or --full-resolution on a large image) gives them room; the model then sees a size other "
        "than its own"]
    default = run_cli("visualize", str(photos["astronaut"]), "--checkpoint", str(tiny_checkpoint), "-o", str(out))
    assert default.returncode == 0 and "note:" not in default.stderr  # 224: 14x14, 7x7, 4x4 tokens


def test_info_prints_the_exact_parameter_count_and_stage_table():
    result = run_cli("info", "efficientvim_m1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "efficientvim_m1 at 224x224, 1000 classes"
    assert lines[1].split() == ["parameters", "6,679,458"]
    # convolutions and matmuls at 224, the number docs/cli.md shows (the paper rounds M1 to 239M)
    assert lines[2].split()[-1] == "(236,394,910)"
    stage_rows = {line.split()[0] + line.split()[1]: line.split() for line in lines if line.strip().startswith("stage")}
    assert stage_rows["stage1"][2:10] == ["2", "128", "x", "14", "x", "14", "49", "128"]
    assert stage_rows["stage3"][2:10] == ["2", "320", "x", "4", "x", "4", "9", "320"]
    assert any(line.split()[:2] == ["forward", "memory"] for line in lines)


def test_a_truncated_image_is_a_one_line_error_with_exit_code_2(tiny_checkpoint, photos, tmp_path):
    data = photos["chelsea"].read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    result = run_cli("predict", str(tmp_path / "truncated.jpg"), "--checkpoint", str(tiny_checkpoint))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f"efficientvim predict: error: {tmp_path / 'truncated.jpg'} is a truncated JPEG "
                             f"({len(data) // 2} bytes, no end marker): replace it with a complete copy\n")
    assert len(result.stderr.strip().splitlines()) == 1


def test_debug_flag_lets_the_exception_through():
    with pytest.raises(efficientvim.UnknownModelError, match="did you mean efficientvim_m"):
        main(["--debug", "info", "efficientvim_m7"])


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, tiny_checkpoint) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.txt").write_text("not a picture\n")
    Image.new("RGB", (13, 300), "red").save(folder / "sliver.png")
    Image.new("RGB", (14, 300), "red").save(folder / "narrow.png")
    (folder / "empty").mkdir()
    (folder / "corrupt.safetensors").write_bytes(tiny_checkpoint.read_bytes()[:500])
    torch.save({"backbone.conv.weight": torch.zeros(2, 2)}, folder / "foreign.pth")
    model = efficientvim.load_model(tiny_checkpoint)
    torch.save(model.state_dict(), folder / "nameless.pth")
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "{bad}/notes.txt", "--checkpoint", "{ckpt}"], "notes.txt is not a JPEG, PNG"),
        # random weights: the warning waits until the inputs are checked, so the error stays the only line
        (["predict", "{bad}/notes.txt", "--model", "efficientvim_m1"], "notes.txt is not a JPEG, PNG"),
        (["predict", "{bad}/sliver.png", "--checkpoint", "{ckpt}"], "sliver.png is 13x300 pixels, too small"),
        (["predict", "{bad}/narrow.png", "--checkpoint", "{ckpt}", "--img-size", "32"],
         "argument --img-size: must be at least 64 (the network's total stride), got 32"),
        (["predict", "{bad}/empty", "--checkpoint", "{ckpt}"], "folder {bad}/empty holds no image files"),
        (["predict", "{bad}/*.jpeg", "--checkpoint", "{ckpt}"], "no files match"),
        (["predict", "{bad}/narrow.png"], "pass a model name, --checkpoint PATH or both"),
        (["predict", "{bad}/narrow.png", "--checkpoint", "{bad}/missing.pth"], "missing.pth not found"),
        (["predict", "{bad}/narrow.png", "--checkpoint", "{bad}/corrupt.safetensors"], "not a readable safetensors"),
        (["predict", "{bad}/narrow.png", "--model", "efficientvim_m1", "--checkpoint", "{bad}/foreign.pth"],
         "is not an EfficientViM checkpoint"),
        (["predict", "{bad}/narrow.png", "--checkpoint", "{bad}/nameless.pth"], "pass the model name as well"),
        (["info", "efficientvim_m7"], "unknown model 'efficientvim_m7': did you mean efficientvim_m"),
        (["predict", "{bad}/narrow.png", "--model", "efficientvim_m7"], "unknown model 'efficientvim_m7'"),
        (["visualize", "{bad}/sliver.png", "--checkpoint", "{ckpt}", "-o", "{bad}/out.png"], "too small"),
        (["visualize", "{bad}/narrow.png", "--checkpoint", "{ckpt}", "-o", "{bad}/out.jpg"], "must end in .png"),
    ],
)
def test_user_mistakes_get_a_one_line_error(args, message, bad_inputs, tiny_checkpoint, capsys):
    fill = {"bad": str(bad_inputs), "ckpt": str(tiny_checkpoint)}
    assert main([a.format(**fill) for a in args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and message.format(**fill) in err[0], err


def test_an_image_one_pixel_per_first_stage_token_wide_is_accepted(bad_inputs, tiny_checkpoint, capsys):
    # 14 px is the rule's boundary at input 224 (224 / 16 first-stage tokens per side); 13 px is refused above
    assert main(["predict", str(bad_inputs / "narrow.png"), "--checkpoint", str(tiny_checkpoint), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
