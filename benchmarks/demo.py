"""Latency of `efficientvim demo` as a client sees it, and the screenshot in the README.

    python benchmarks/demo.py IMAGE [--requests 20] [--screenshot OUT.png [--example N]] -- DEMO ARGS...

Starts ``efficientvim demo DEMO ARGS --port P`` on 127.0.0.1, waits until it serves, then sends IMAGE to the
``/predict`` endpoint ``--requests`` times with gradio_client, one after another, 0.2 s apart (a person's
pace, not a load test), and prints the first request's round trip and the median and worst of the rest:
upload, queue, prediction and reply, as the client's clock sees them; next to them, the server's own timing of
the prediction (read, preprocess, model) from its log. With ``--screenshot``, headless Chromium (Selenium,
Debian's chromium and chromium-driver) loads the page, clicks example N (or uploads IMAGE when N is not given),
waits for the hidden-state picture and saves the page as a PNG.

Examples (the figures in docs/cli.md):

    python benchmarks/demo.py photo.jpg -- --model efficientvim_m1            # M1 at 224, random weights
    python benchmarks/demo.py digit.png --screenshot docs/img/demo.png --example 2 \
        -- --checkpoint runs/digits/best.safetensors
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def start(demo_args: list[str]) -> tuple[subprocess.Popen, str, list[str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(SRC), "NO_PROXY": "127.0.0.1,localhost"}
    proc = subprocess.Popen([sys.executable, "-m", "efficientvim", "demo", *demo_args, "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        found = [line for line in lines if " at http://" in line]
        if found:
            return proc, found[0].split(" at ", 1)[1].split()[0], lines
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"the demo did not start:\n{''.join(lines)[-3000:]}")


def screenshot(url: str, image: Path, out: Path, example: int | None) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1560", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        if example is None:
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))[0].send_keys(str(image))
        else:
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button.gallery-item"))[example].click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#maps img"))
        time.sleep(1.0)  # the picture fades in
        out.write_bytes(driver.get_screenshot_as_png())
        print(f"wrote {out}")
    finally:
        driver.quit()


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("image", type=Path)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--screenshot", type=Path)
    p.add_argument("--example", type=int)
    args = p.parse_args(argv[:split])
    proc, url, log = start(argv[split + 1:])
    try:
        from gradio_client import Client, handle_file

        client = Client(url, verbose=False)
        times = []
        for _ in range(args.requests):
            begin = time.perf_counter()
            reply = client.predict(handle_file(str(args.image)), api_name="/predict")
            times.append(1e3 * (time.perf_counter() - begin))
            time.sleep(0.2)
        server = [float(m) for m in re.findall(r"in ([\d.]+) ms$", "".join(log), re.M)]
        print(f"{url}  top-1 {reply['label']!r}  {args.requests} requests from gradio_client")
        print(f"  round trip: first {times[0]:.0f} ms, then median {statistics.median(times[1:]):.0f} ms, "
              f"worst {max(times[1:]):.0f} ms")
        if len(server) == len(times):
            print(f"  server's prediction (read + preprocess + model): first {server[0]:.1f} ms, then median "
                  f"{statistics.median(server[1:]):.1f} ms")
        if args.screenshot:
            screenshot(url, args.image, args.screenshot, args.example)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


if __name__ == "__main__":
    main()
