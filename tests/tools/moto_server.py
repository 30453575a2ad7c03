"""moto's server with one request handled at a time.

moto's own `moto_server` handles requests on many threads without locking
its backends, so two conditional writes racing on one item can both pass
their condition (seen: two UpdateItems at version 1 both applied). DynamoDB
makes each conditional write atomic; serialising moto's requests gives the
tests the same guarantee. Usage: moto_server.py HOST PORT
"""

import sys
import threading

from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    create_backend_app,
)
from werkzeug.serving import run_simple


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ, start_response):
        with lock:
            # Read the whole answer while holding the lock.
            return list(app(environ, start_response))

    run_simple(
        host,
        port,
        serialised,
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
