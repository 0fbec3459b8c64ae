"""Large images at their own size: predict and visualize --full-resolution (no resize or crop)."""

from __future__ import annotations

import json

import torch
from PIL import Image

import efficientvim as ev
from efficientvim.cli import main
from efficientvim.predict import make_transform

TINY = dict(embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4))


def test_predict_and_visualize_at_full_resolution(tmp_path, capsys):
    torch.manual_seed(0)
    model = ev.create_model("efficientvim_m1", num_classes=10, **TINY).eval()
    weights = str(ev.save_weights(model, tmp_path / "w.safetensors"))
    g = torch.Generator().manual_seed(0)
    sizes = [(700, 300), (64, 900)]  # (width, height): wide, and a tall strip at the minimum width
    for i, (w, h) in enumerate(sizes):
        pixels = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    argv = ["predict", str(tmp_path / "0.png"), str(tmp_path / "1.png"), "--checkpoint", weights, "--json", "--topk",
            "1"]
    assert main([*argv, "--full-resolution"]) == 0
    answers = json.loads(capsys.readouterr().out)
    # the model on the whole image, only normalised: what --full-resolution promises
    to_tensor = make_transform(model, "full")
    for answer, i in zip(answers, range(len(sizes))):
        x = to_tensor(Image.open(tmp_path / f"{i}.png").convert("RGB"))
        assert x.shape[1:] == (sizes[i][1], sizes[i][0])
        with torch.no_grad():
            probs = model(x[None]).softmax(-1)[0]
        assert answer["predictions"][0]["index"] == int(probs.argmax())
        assert abs(answer["predictions"][0]["probability"] - float(probs.max())) < 1e-4
    # an image smaller than the network's stride cannot be taken whole: one line, exit 2
    Image.new("RGB", (300, 40)).save(tmp_path / "thin.png")
    assert main([*argv[:1], str(tmp_path / "thin.png"), *argv[3:], "--full-resolution"]) == 2
    err = capsys.readouterr().err
    assert "thin.png" in err and err.count("\n") == 1
    assert main([*argv, "--full-resolution", "--img-size", "128"]) == 2
    assert "--img-size and --full-resolution exclude each other" in capsys.readouterr().err
    out = tmp_path / "maps.png"
    assert main(["visualize", str(tmp_path / "0.png"), "--checkpoint", weights, "-o", str(out),
                 "--full-resolution"]) == 0
    assert out.exists() and Image.open(out).size[0] > 0
