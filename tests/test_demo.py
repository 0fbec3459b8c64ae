"""efficientvim demo: the page served by the real command on a free loopback port, called by gradio_client and
compared with ``predict --json`` by value; bad uploads answered in one readable line while the server keeps
serving; Ctrl-C; the default model; and the page in a real browser (headless Chromium driven by Selenium)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import efficientvim as ev
from efficientvim.demo.examples import photo_examples
from efficientvim.runtimes import auto_runtime

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES = ["cat", "cup", "man", "sky"]  # the classes of conftest's checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``efficientvim demo ARGS`` in a subprocess, its output collected; ``url`` once it serves."""

    def __init__(self, *args: str, tmp: Path, cwd: Path | None = None, prefix: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        env = {**os.environ, "PYTHONPATH": str(SRC), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "2",
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "efficientvim", "demo", *args], env=env, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, l=lines: l.extend(iter(s.readline, "")), daemon=True).start()

    def wait_until_serving(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in self.out:
                if " at http://" in line:
                    return line.split(" at ", 1)[1].split()[0]
            time.sleep(0.1)
        raise AssertionError(f"the demo did not start: {''.join(self.err)[-3000:]}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def caches(self) -> list[Path]:
        return sorted(self.tmp.glob("efficientvim-demo-*"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Real photos in odd formats (16-bit, CMYK, animated, EXIF-rotated) and the uploads a careless or hostile user
    sends: text, an empty file, a truncated PNG, a decompression bomb, a 1x1 image, a file over the size limit."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from test_hostile import _png

    root = tmp_path_factory.mktemp("uploads")
    cat = Image.fromarray(data.chelsea())
    cat.resize((301, 233)).save(root / "cat.jpg", quality=90)
    Image.fromarray(data.coffee()).resize((190, 250)).save(root / "coffee.webp")
    grey = (data.camera().astype(np.uint16) * 257)[::3, ::3]
    Image.fromarray(grey).save(root / "deep.png")  # 16-bit grey
    Image.fromarray(data.astronaut()).resize((160, 160)).convert("CMYK").save(root / "cmyk.jpg")
    frames = [Image.fromarray(data.rocket()).resize((120, 90)), cat.resize((120, 90))]
    frames[0].save(root / "moving.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright is a quarter turn away
    cat.resize((200, 120)).save(root / "rotated.jpg", exif=exif)
    (root / "notes.png").write_text("not a picture")
    (root / "empty.jpg").write_bytes(b"")
    whole = (root / "deep.png").read_bytes()
    (root / "cut.png").write_bytes(whole[: len(whole) // 2])
    _png(root / "bomb.png", 30000, 30000, rows=1)
    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "dot.png")
    Image.effect_noise((1100, 1100), 60).convert("RGB").save(root / "big.bmp")  # 3.6 MB, over the 2 MB limit
    return {p.name: p for p in root.iterdir()}


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    s = Server("--checkpoint", str(checkpoint), "--port", str(free_port()), "--max-file-size", "2", tmp=tmp)
    s.url = s.wait_until_serving()
    yield s
    s.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server.url, verbose=False)


def predict_json(checkpoint: Path, path: Path) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "efficientvim", "predict", str(path), "--checkpoint",
                             str(checkpoint), "--json"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]["predictions"]


PHOTOS = ("cat.jpg", "coffee.webp", "deep.png", "cmyk.jpg", "moving.gif", "rotated.jpg")


def test_the_api_gives_what_predict_json_gives(server, client, checkpoint, files):
    answers = set()
    for name in PHOTOS:
        got = client.predict(gradio_client.handle_file(str(files[name])), api_name="/predict")
        want = predict_json(checkpoint, files[name])
        assert got["label"] == want[0]["label"], name
        assert [c["label"] for c in got["confidences"]] == [p["label"] for p in want], name
        assert [c["confidence"] for c in got["confidences"]] == pytest.approx(
            [p["probability"] for p in want], abs=1e-6), name
        answers.add(tuple(round(c["confidence"], 4) for c in got["confidences"]))
    assert len(answers) == len(PHOTOS)  # each photo its own answer: not one constant reply
    log = "".join(server.out)
    assert "'cat.jpg' -> " in log and "request 6:" in log


BAD = {
    "notes.png": "notes.png is not a JPEG, PNG, WebP, TIFF, BMP, GIF or PPM image (the formats read, told by the "
                 "contents, not the name)",
    "empty.jpg": "empty.jpg is empty (0 bytes): replace it with the image it should hold",
    "cut.png": "cut.png is a truncated PNG (",  # (N bytes, no end marker): replace it with a complete copy
    "bomb.png": "bomb.png is too large to decode (Image size (900000000 pixels) exceeds limit of 178956970 pixels): "
                "resize it first",
    "dot.png": "dot.png is 1x1 pixels, too small: the model needs a shorter side of at least 14 px",
}


def test_bad_uploads_get_one_readable_line_and_the_server_keeps_serving(server, client, files):
    from gradio_client.exceptions import AppError

    for name, message in BAD.items():
        with pytest.raises(AppError) as e:
            client.predict(gradio_client.handle_file(str(files[name])), api_name="/predict")
        text = str(e.value)
        assert text.startswith(message), (name, text)
        assert "Traceback" not in text and "\n" not in text
        assert client.predict(gradio_client.handle_file(str(files["cat.jpg"])), api_name="/predict")["label"] in CLASSES
    with pytest.raises(Exception, match="(?i)file size|too large|exceed"):  # refused by Gradio's upload route
        client.predict(gradio_client.handle_file(str(files["big.bmp"])), api_name="/predict")
    assert client.predict(gradio_client.handle_file(str(files["cat.jpg"])), api_name="/predict")["label"] in CLASSES
    assert "Traceback" not in "".join(server.err)
    assert server.proc.poll() is None


def test_the_runtime_comparison_tab_runs_the_same_image_everywhere_installed(client, files):
    table = client.predict(gradio_client.handle_file(str(files["cat.jpg"])), api_name="/compare")
    rows = {(r[0], r[1]): r for r in table["data"]}
    assert set(rows) == {("eager", "fp32"), ("eager", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
                         ("openvino", "bf16")}
    ran = [r for r in rows.values() if r[5]]
    assert ("eager", "fp32") in {(r[0], r[1]) for r in ran} and ("onnxruntime", "fp32") in {(r[0], r[1]) for r in ran}
    assert {r[2] for r in ran} == {rows["eager", "fp32"][2]}  # every runtime: the same top-1
    assert rows[auto_runtime("fp32")[0], "fp32"][6] == "1.00x"  # the page's own runtime, --runtime auto's choice
    assert all(float(r[5]) > 0 for r in ran)
    for r in rows.values():
        if not r[5]:  # bf16 on a CPU without it: said, not silently run in fp32
            assert r[1] == "bf16" and r[4].startswith("skipped: this CPU has no native bf16"), r


def test_ctrl_c_stops_cleanly_and_leaves_no_uploads(checkpoint, files, tmp_path):
    s = Server("--checkpoint", str(checkpoint), "--port", str(free_port()), tmp=tmp_path)
    url = s.wait_until_serving()
    (cache,) = s.caches()
    c = gradio_client.Client(url, verbose=False)
    c.predict(gradio_client.handle_file(str(files["cat.jpg"])), api_name="/predict")
    assert any(p.name == "cat.jpg" for p in cache.rglob("*"))  # uploads land in the server's own cache ...
    assert s.stop(signal.SIGINT) == 0
    assert "stopped" in "".join(s.err) and "Traceback" not in "".join(s.err)
    assert s.caches() == []  # ... which is gone once it stops
    assert list(tmp_path.iterdir()) == []  # and nothing else was written in the temporary folder


def test_without_a_model_it_serves_the_newest_run_or_says_what_to_pass(checkpoint, tmp_path):
    empty = subprocess.run([sys.executable, "-m", "efficientvim", "demo"], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=120)
    assert empty.returncode == 2
    assert empty.stderr.strip() == (
        "efficientvim demo: error: no model to serve: pass --checkpoint FILE or --model NAME.TAG (e.g. "
        "efficientvim_m1.e450_in1k, downloaded once), or run `efficientvim train` first (the page then serves "
        "runs/*/best.safetensors)")
    for run in ("older", "newer"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        shutil.copy(checkpoint, tmp_path / "runs" / run / "best.safetensors")
        time.sleep(0.05)
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "best.safetensors").write_bytes(b"cut")  # the newest file, but unreadable
    s = Server("--port", str(free_port()), tmp=tmp_path, cwd=tmp_path)
    try:
        s.wait_until_serving()
        assert "serving runs/newer/best.safetensors, the newest classifier in runs/" in "".join(s.err)
    finally:
        assert s.stop() == 0


def test_a_port_in_use_is_one_line(checkpoint, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "efficientvim", "demo", "--checkpoint", str(checkpoint),
                                 "--port", str(port)], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PYTHONPATH": str(SRC), "TMPDIR": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr == (f"efficientvim demo: error: cannot serve on 127.0.0.1:{port}: the port is in use "
                             "(another server?): pass another --port\n")
    assert list(tmp_path.iterdir()) == []  # its private cache folder removed


def test_a_network_host_is_warned_about(checkpoint, tmp_path):
    if os.geteuid() != 0 or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        pytest.skip("serving on 0.0.0.0 is tested in a private network namespace (unshare -n), which needs root")
    script = 'ip link set lo up && exec "$@"'
    s = Server("--checkpoint", str(checkpoint), "--host", "0.0.0.0", "--port", "7860", tmp=tmp_path,
               prefix=("unshare", "-n", "sh", "-c", script, "sh"))
    try:
        s.wait_until_serving()
        assert ("warning: --host 0.0.0.0 makes the page reachable from the network: anyone who can reach this "
                "machine can upload images to it") in "".join(s.err)
    finally:
        assert s.stop() == 0


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no Chromium and chromedriver here: .ci/run installs Debian's chromium and chromium-driver "
                    "(as root); elsewhere install them to run the browser test")
    pytest.importorskip("selenium")
    return browser, driver


def test_a_real_browser_uploads_a_photo_and_reads_the_top_label(server, checkpoint, files):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = chromium()
    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1600", "--no-proxy-server"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(server.url)
        wait = WebDriverWait(driver, 60)
        upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))[0]
        assert driver.title == "efficientvim: efficientvim_m1"
        upload.send_keys(str(files["cat.jpg"]))
        shown = wait.until(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, "#top [data-testid="
                                                                      "'label-output-value']") if e.text])[0]
        assert shown == predict_json(checkpoint, files["cat.jpg"])[0]["label"]
        timing = wait.until(lambda d: d.find_element(By.ID, "timing").text)
        assert f" ms on this machine ({auto_runtime('fp32')[0]} fp32): read " in timing
        assert wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#maps img"))  # the hidden-state picture
        # an example of the page (a photo installed with scikit-learn, for this non-digits model), clicked
        first = photo_examples()[0]
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button.gallery-item"))[0].click()
        wait.until(lambda d: f"'{first.name}' -> " in "".join(server.out))
        shown = wait.until(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, "#top [data-testid="
                                                                      "'label-output-value']") if e.text])[0]
        assert shown == predict_json(checkpoint, first)[0]["label"]
    finally:
        driver.quit()


def test_the_comparison_names_the_extra_a_runtime_lacks_and_the_picture_is_drawn(checkpoint, files, monkeypatch):
    from efficientvim import sessions
    from efficientvim.demo import DemoSession

    monkeypatch.setattr(sessions, "installed", lambda module: module != "onnx")  # the runtimes, not onnx
    session = DemoSession(ev.load_model(checkpoint), str(checkpoint))
    rows = {(r["runtime"], r["precision"]): r for r in session.compare(files["cat.jpg"], "cat.jpg", repeats=1)}
    assert rows["onnxruntime", "fp32"]["note"] == "not installed: pip install 'efficientvim[onnx]'"
    assert rows["openvino", "fp32"]["note"] == "not installed: pip install 'efficientvim[openvino]'"
    eager = rows["eager", "fp32"]
    prediction = session.predict(files["cat.jpg"], "cat.jpg")
    assert eager["ms"] > 0 and eager["predictions"] == prediction.predictions
    # the hidden-state picture of the decoded upload: visualize's figure, as pixels
    from efficientvim.viz import FIGURE_SIZE_PX

    picture = session.hidden_states(prediction.image, "cat.jpg")
    assert picture.mode == "RGB" and picture.size == FIGURE_SIZE_PX
    assert len(set(picture.resize((64, 40)).getdata())) > 50  # drawn, not blank
