"""Stands in for the demo's serve step: starts the service as `make serve` would, waits until it is ready,
classifies one of the sample images it offers, prints the answer and stops it. Exits non-zero on any failure.

Run by the Makefile's recipe (``make demo SERVE="python tests/demo/ready_check.py"``), so it sees exactly the
environment and working directory the real serve step has.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def main() -> int:
    port = free_port()
    env = {**os.environ, "CASTREAM_PORT": str(port), "CASTREAM_HOST": "127.0.0.1"}
    server = subprocess.Popen([sys.executable, "-m", "service"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                print(f"the service exited with status {server.returncode} before it was ready", file=sys.stderr)
                return 1
            try:
                get(base + "/readyz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    print("the service was not ready within 120 s", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        (sample, *_) = json.loads(get(base + "/v1/samples"))
        image = get(f"{base}/{sample['url']}")
        body = json.dumps({"images": [base64.b64encode(image).decode()]}).encode()
        request = urllib.request.Request(
            base + "/classify?top_k=1", body, {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        best = answer["predictions"][0]["top_k"][0]
        print(f"ready: a sample {sample['label']} classified as {best['label']} ({best['score']:.3f})")
        return 0
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
