"""Container health check: exit 0 only while ``GET /readyz`` answers 200 (the model is loaded and warmed up).

Run by the images' HEALTHCHECK with the image's own Python, so the slim image needs no curl.
"""

import os
import sys
import urllib.error
import urllib.request

PORT = os.environ.get("CASTREAM_PORT", "8000")
URL = f"http://127.0.0.1:{PORT}/readyz"


def main() -> int:
    try:
        with urllib.request.urlopen(URL, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:  # HTTPError (503) is a URLError
        print(f"{URL}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
