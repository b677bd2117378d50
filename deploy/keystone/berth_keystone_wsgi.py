"""The WSGI module gunicorn serves: Keystone 30.0.0's API.

Keystone parses sys.argv with oslo.config, so gunicorn's own flags must go
first or every worker exits with code 2 (and gunicorn respawns it forever).
Requests run one at a time: with SQLite, two Keystone transactions at once
fail with "database is locked". The gthread threads still read requests
concurrently, so an idle client connection does not stall the others.
"""

import sys
import threading

sys.argv = sys.argv[:1]
from keystone.wsgi.api import application as keystone  # noqa: E402

_one_at_a_time = threading.Lock()


def application(environ, start_response):
    with _one_at_a_time:
        result = keystone(environ, start_response)
        try:
            return list(result)
        finally:
            if hasattr(result, "close"):
                result.close()
