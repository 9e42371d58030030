"""A WSGI app for gunicorn under prefork-server's exec mode:

    prefork-server --port 8000 --workers 4 -- \
        gunicorn --workers 1 --chdir examples/exec wsgi_hello:app

Each slot runs one gunicorn (its arbiter and one worker) on the slot's socket,
fd 3; gunicorn says READY=1 over NOTIFY_SOCKET itself, and drains on SIGTERM.
"""

import os


def app(environ, start_response):
    body = f"Hello from worker {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
