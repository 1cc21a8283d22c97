"""``python -m service``: validate settings, then serve with uvicorn and drain gracefully on SIGTERM.

With ``CASTREAM_WORKERS`` above 1, this process binds the port and supervises that many serving processes
(``service.supervisor``); otherwise it serves itself (``service.server``).
"""

from __future__ import annotations

import logging
import sys

from service.logs import configure as configure_logging
from service.settings import SettingsError, load_settings

log = logging.getLogger("service")


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        log.error("%s", exc)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # Imported on the branch taken: a supervising parent serves nothing and need not load the app's libraries.
    if settings.workers > 1:
        from service.supervisor import Supervisor

        return Supervisor(settings).run()
    from service.server import build, run

    return run(build(settings))


if __name__ == "__main__":
    sys.exit(main())
