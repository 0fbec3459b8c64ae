"""Bulk predict and embed to Parquet: rows by value against the model, every path exactly once through errors,
kills and reruns, listings and URIs; and the same job on Ray Data (a local instance, a 2-node cluster, a killed
worker), all inside a private network namespace bound to loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import efficientvim as ev
from efficientvim.runtimes import auto_runtime

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pads = pytest.importorskip("pyarrow.dataset")

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = dict(embed_dim=(16, 32, 48), depths=(1, 1, 1), state_dim=(4, 4, 4))
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "efficientvim", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos (scikit-image's samples) at odd sizes and formats, a nested folder, and files that are no
    input: text named .jpg, an empty file, a truncated JPEG, a 1-pixel-high strip."""
    skimage = pytest.importorskip("skimage.data")
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    (root / "nested" / "deeper").mkdir(parents=True)
    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field")
    for i, name in enumerate(names):
        image = Image.fromarray(getattr(skimage, name)()).convert("RGB")
        image = image.resize((97 + 31 * i, 83 + 17 * i))
        folder = root if i < 2 else root / "nested" if i < 4 else root / "nested" / "deeper"
        image.save(folder / f"{name}.{('jpg', 'png', 'webp')[i % 3]}")
    (root / "notes.jpg").write_text("not a picture")
    (root / "empty.png").write_bytes(b"")
    jpeg = (root / "astronaut.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    Image.new("L", (4000, 1)).save(root / "strip.png")
    return root


GOOD = 6
BAD = {"notes.jpg": "is not a JPEG, PNG", "empty.png": "is empty (0 bytes)", "cut.jpg": "truncated JPEG",
       "strip.png": "one side more than 100 times the other"}


def rows(out: Path) -> dict[str, dict]:
    table = pads.dataset(str(out), format="parquet").to_table()
    listed = table.to_pylist()
    assert len({r["path"] for r in listed}) == len(listed), "a path written twice"
    return {r["path"]: r for r in listed}


def test_predict_writes_one_row_per_path_equal_to_predict_json(tmp_path, photos, checkpoint):
    result = cli("predict", str(photos), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"),
                 "--topk", "3", "--img-size", "96", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(f"predict: {GOOD + len(BAD)} images done ({len(BAD)} errors), 0 skipped")
    assert "it/s" not in result.stderr and "img/s" not in result.stderr  # --quiet: no bar
    got = rows(tmp_path / "out")
    assert len(got) == GOOD + len(BAD)
    for name, reason in BAD.items():
        row = got[str(photos / name)]
        assert reason in row["error"] and "\n" not in row["error"]
        assert row["label"] is None and row["probability"] is None and row["topk_labels"] is None
    good = sorted(p for p in got if got[p]["error"] is None)
    reference = json.loads(cli("predict", *good, "--checkpoint", str(checkpoint), "--topk", "3", "--img-size", "96",
                               "--json").stdout)
    labels = set()
    for entry in reference:
        row = got[entry["image"]]
        assert row["topk_labels"] == [p["label"] for p in entry["predictions"]]
        np.testing.assert_allclose(row["topk_probabilities"], [p["probability"] for p in entry["predictions"]],
                                   rtol=1e-5, atol=1e-6)
        assert row["label"] == row["topk_labels"][0] and row["probability"] == row["topk_probabilities"][0]
        labels.add(row["label"])
    assert len(labels) > 1, "a model that says one thing for every photo shows nothing"
    schema = pq.read_schema(next((tmp_path / "out").glob("part-*.parquet")))
    assert schema.field("topk_probabilities").type == pa.list_(pa.float32())
    recorded = json.loads(schema.metadata[b"efficientvim"])
    assert recorded["model"] == "efficientvim_m1" and recorded["topk"] == 3 and len(recorded["weights_sha256"]) == 64
    assert recorded["preprocessing"]["input_size"] == [3, 96, 96] and recorded["runtime"] == auto_runtime("fp32")[0]


def test_embed_writes_the_models_pooled_features_to_one_file(tmp_path, photos, checkpoint):
    import pandas as pd

    out = tmp_path / "emb.parquet"
    result = cli("embed", str(photos), "--checkpoint", str(checkpoint), "--output", str(out), "--img-size", "96")
    assert result.returncode == 0, result.stderr
    assert "img/s" in result.stderr  # the progress bar, with images/s
    assert out.is_file() and not (tmp_path / "emb.parquet.parts").exists()
    frame = pd.read_parquet(out)
    assert len(frame) == GOOD + len(BAD) and frame["path"].is_unique
    from efficientvim.images import read_image
    from efficientvim.predict import make_transform, set_input_size

    model = ev.load_model(checkpoint).eval()
    set_input_size(model, 96)
    assert pq.read_schema(out).field("embedding").type == pa.list_(pa.float32(), model.num_features)
    transform = make_transform(model)
    for row in frame[frame["error"].isna()].itertuples():
        x = transform(read_image(row.path))[None]
        with torch.no_grad():
            expected = model.forward_head(model.forward_features(x), pre_logits=True)[0].numpy()
        np.testing.assert_allclose(np.asarray(row.embedding), expected, rtol=1e-4, atol=1e-5 * abs(expected).max())
    assert frame[frame["error"].notna()]["embedding"].isna().all()
    again = cli("embed", str(photos), "--checkpoint", str(checkpoint), "--output", str(out), "--img-size", "96")
    assert again.returncode == 0 and f"nothing to do: all {GOOD + len(BAD)} paths of {photos} are in {out}" \
        in again.stderr
    assert f"0 images done (0 errors), {GOOD + len(BAD)} skipped" in again.stdout


def test_listings_globs_and_uris_name_the_same_paths(tmp_path, photos, checkpoint):
    files = sorted(str(p) for p in photos.rglob("*") if p.is_file())
    (tmp_path / "list.txt").write_text("# my photos\n" + "\n".join(files + files[:2]) + "\n")
    (tmp_path / "list.csv").write_text("id,path\n" + "\n".join(f"{i},{p}" for i, p in enumerate(files)) + "\n")
    pq.write_table(pa.table({"path": [Path(p).as_uri() for p in files]}), tmp_path / "list.parquet")
    outs = {}
    for source in ("list.txt", "list.csv", "list.parquet"):
        result = cli("predict", str(tmp_path / source), "--checkpoint", str(checkpoint), "--output",
                     str(tmp_path / f"out-{source}"), "--img-size", "96", "-q")
        assert result.returncode == 0, result.stderr
        outs[source] = rows(tmp_path / f"out-{source}")
    again = cli("predict", str(tmp_path / "list.txt"), "--checkpoint", str(checkpoint), "--output",
                str(tmp_path / "out-list.txt"), "-q")  # at the model's own size this time: other rows
    assert again.returncode == 2 and again.stderr.strip().endswith(
        "holds predict rows of another job (input_size [3, 96, 96] -> [3, 224, 224]): choose another output, or "
        "--overwrite to start again")
    again = cli("predict", str(tmp_path / "list.txt"), "--checkpoint", str(checkpoint), "--output",
                str(tmp_path / "out-list.txt"), "--img-size", "96", "-q")
    assert "note: 2 entries of" in again.stderr and f"{len(files)} skipped" in again.stdout
    result = cli("predict", f"{photos}/nested/**/*.*", "--checkpoint", str(checkpoint), "--output",
                 str(tmp_path / "out-glob"), "--img-size", "96", "-q")
    assert result.returncode == 0, result.stderr
    assert sorted(rows(tmp_path / "out-glob")) == sorted(p for p in files if "/nested/" in p)
    assert sorted(outs["list.txt"]) == sorted(outs["list.csv"]) == files
    by_uri = {Path(p.removeprefix("file://")).as_posix(): r for p, r in outs["list.parquet"].items()}
    for path, row in outs["list.txt"].items():  # a file:// URI reads the same bytes
        assert by_uri[path]["label"] == row["label"] and (row["error"] is None) == (by_uri[path]["error"] is None)


def test_a_killed_run_resumes_without_losing_or_repeating_a_path(tmp_path, checkpoint):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "many").mkdir()
    for i in range(240):
        Image.fromarray((rng.random((70, 90, 3)) * 255).astype("uint8")).save(tmp_path / "many" / f"{i:03d}.jpg")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "efficientvim", "embed", str(tmp_path / "many"), "--checkpoint", str(checkpoint),
               "--output", str(out), "--img-size", "64", "--batch-size", "8", "--rows-per-part", "8", "--threads", "1"]
    for sig in (signal.SIGKILL, signal.SIGTERM):
        before = len(list(out.glob("part-*.parquet")))
        proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while len(list(out.glob("part-*.parquet"))) < before + 2 and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)  # stopped once this run has written two parts
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGTERM:
            assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err
        for part in out.glob("*"):  # every file there is a whole part, or the hidden temporary of one cut short
            if part.name.startswith("."):  # (a SIGKILL mid-write leaves it; the reader never lists it)
                assert part.name.startswith(".part-") and part.name.endswith(".tmp"), part.name
                continue
            assert part.name.startswith("part-") and pq.read_metadata(part).num_rows > 0
        kept = len(rows(out))
        assert 0 < kept < 240, "the test must stop the run half way"
    result = cli("embed", str(tmp_path / "many"), "--checkpoint", str(checkpoint), "--output", str(out),
                 "--img-size", "64", "--batch-size", "8", "--rows-per-part", "8")
    assert result.returncode == 0, result.stderr
    assert f"{240 - kept} images done (0 errors), {kept} skipped" in result.stdout
    assert sorted(rows(out)) == sorted(str(p) for p in (tmp_path / "many").iterdir())


def test_another_model_for_an_existing_output_is_one_line_or_overwritten(tmp_path, photos, checkpoint):
    out = tmp_path / "out"
    assert cli("predict", str(photos), "--checkpoint", str(checkpoint), "--output", str(out), "-q").returncode == 0
    other = tmp_path / "other.safetensors"
    ev.save_weights(ev.create_model("efficientvim_m1", num_classes=4, **TINY), other, class_names=list("abcd"))
    refused = cli("predict", str(photos), "--checkpoint", str(other), "--output", str(out), "-q")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"error: {out} holds predict rows of another job (weights " in refused.stderr
    redone = cli("predict", str(photos), "--checkpoint", str(other), "--output", str(out), "-q", "--overwrite")
    assert redone.returncode == 0 and {r["topk_labels"][0] for r in rows(out).values() if r["label"]} <= set("abcd")
    wrong = cli("predict", str(photos), str(photos), "--checkpoint", str(other), "--output", str(out))
    assert wrong.returncode == 2 and "--output takes one SOURCE" in wrong.stderr


# Ray: run inside a private network namespace (Ray binds the machine's address otherwise), loopback only

RAY_SCRIPT = r"""
set -e
ip link set lo up
export PYTHONPATH={src} RAY_ADDRESS= OMP_NUM_THREADS=1
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={token}  # the cluster's token, for every node and the job
ev() {{ {python} -m efficientvim "$@"; }}
case {scenario} in
local)
    ev predict {photos} --checkpoint {ckpt} --output {tmp}/ray --img-size 96 --engine ray -q ;;
cluster)
    trap '{ray} stop --force >/dev/null 2>&1 || true' EXIT
    {ray} start --head --node-ip-address 127.0.0.1 --port 6391 --num-cpus 1 --include-dashboard false >/dev/null
    {ray} start --address 127.0.0.1:6391 --node-ip-address 127.0.0.1 --num-cpus 1 >/dev/null
    {python} -c "import ray; ray.init(address='127.0.0.1:6391'); print('nodes', sum(n['Alive'] for n in ray.nodes()))"
    ev embed {photos} --checkpoint {ckpt} --output {tmp}/cluster --img-size 96 --engine ray \
        --address 127.0.0.1:6391 -q ;;
kill)
    ev embed {many} --checkpoint {ckpt} --output {tmp}/killed --img-size 64 --engine ray --rows-per-part 16 -q &
    job=$!
    for i in $(seq 1 600); do
        if ls {tmp}/killed/part-*.parquet >/dev/null 2>&1 && pgrep -f '^ray::MapWorker' >/dev/null; then break; fi
        sleep 0.1
    done
    echo "parts before the kill: $(ls {tmp}/killed | grep -c '^part-')"
    pkill -9 -f '^ray::MapWorker' && echo killed a worker
    wait $job ;;
esac
"""


def ray_job(scenario: str, tmp_path: Path, **paths: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("ray")
    if os.geteuid() != 0 or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        pytest.skip("Ray runs in a private network namespace (unshare -n), which needs root (CI runs as root)")
    ray = Path(sys.executable).with_name("ray")
    import secrets

    script = RAY_SCRIPT.format(src=SRC, python=sys.executable, ray=ray, scenario=scenario, tmp=tmp_path,
                               token=secrets.token_hex(32),
                               **{k: str(v) for k, v in paths.items()})
    return subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=400)


def ray_and_local(scenario: str, task: str, out: str, tmp_path: Path, photos: Path, checkpoint: Path):
    """(the Ray job's run, its rows, the local engine's rows for the same job): every path in both."""
    result = ray_job(scenario, tmp_path, photos=photos, ckpt=checkpoint, many=photos)
    assert result.returncode == 0, result.stderr[-3000:]
    local = cli(task, str(photos), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "local"),
                "--img-size", "96", "-q")
    assert local.returncode == 0
    by_ray, by_local = rows(tmp_path / out), rows(tmp_path / "local")
    assert sorted(by_ray) == sorted(by_local)
    return result, by_ray, by_local


def test_ray_predicts_what_the_local_engine_predicts(tmp_path, photos, checkpoint):
    result, by_ray, by_local = ray_and_local("local", "predict", "ray", tmp_path, photos, checkpoint)
    assert result.stdout.strip().endswith(f"{GOOD + len(BAD)} rows in {tmp_path}/ray")
    for path, row in by_local.items():
        assert by_ray[path]["topk_labels"] == row["topk_labels"] and by_ray[path]["error"] == row["error"]
        if row["probability"] is not None:
            assert abs(by_ray[path]["probability"] - row["probability"]) < 1e-6


def test_ray_on_a_two_node_cluster_embeds_what_the_local_engine_embeds(tmp_path, photos, checkpoint):
    result, by_ray, by_local = ray_and_local("cluster", "embed", "cluster", tmp_path, photos, checkpoint)
    assert "nodes 2" in result.stdout
    for path, row in by_local.items():
        if row["embedding"] is None:
            assert by_ray[path]["embedding"] is None and by_ray[path]["error"] == row["error"]
        else:
            np.testing.assert_allclose(by_ray[path]["embedding"], row["embedding"], rtol=1e-5, atol=1e-6)


def test_a_killed_ray_worker_loses_no_path_and_repeats_none(tmp_path, checkpoint):
    from PIL import Image

    many = tmp_path / "many"
    many.mkdir()
    rng = np.random.default_rng(1)
    for i in range(160):
        Image.fromarray((rng.random((70, 90, 3)) * 255).astype("uint8")).save(many / f"{i:03d}.jpg")
    result = ray_job("kill", tmp_path, photos=many, ckpt=checkpoint, many=many)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "killed a worker" in result.stdout
    before = int(result.stdout.split("parts before the kill: ")[1].split()[0])
    assert 1 <= before < 10, "the worker must die half way (10 parts of 16 paths in all)"
    assert sorted(rows(tmp_path / "killed")) == sorted(str(p) for p in many.iterdir())
    shutil.rmtree(many)


def test_a_ray_address_nobody_answers_at_is_one_line_within_seconds(tmp_path, photos, checkpoint):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a free loopback port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    result = cli("embed", str(photos), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"),
                 "--engine", "ray", "--address", f"127.0.0.1:{port}", timeout=120)
    assert time.monotonic() - start < 60
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: no Ray cluster answers at 127.0.0.1:{port} (Connection refused)" in result.stderr
    assert not (tmp_path / "out").exists()
    assert "--address joins a Ray cluster: add --engine ray" in cli(
        "embed", str(photos), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), "--address",
        f"127.0.0.1:{port}").stderr
