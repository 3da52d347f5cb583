"""gunicorn's settings for our web process, one place for `make run`, docker, the tests and the benchmarks.

    gunicorn imaging.wsgi:application --config python:imaging.gunicorn_conf --bind ...

Threads, not one request per process: a browser opens spare connections it may never
use (chromium preconnects), and with gunicorn's sync workers each one held a whole
worker until the 30 s timeout, so the viewer's page stood still for 30 s behind two
idle sockets. gthread also keeps connections alive between a client's requests. Same
latency as sync workers, measured side by side (same run, 200 requests each, taking
turns): a short QIDO-RS search 6.8 against 7.1 ms, a frame 10.2 against 10.3 ms.
The worker count still comes from WEB_CONCURRENCY (gunicorn reads it itself) or
--workers; any other flag from GUNICORN_CMD_ARGS.
"""

worker_class = "gthread"
threads = 4
