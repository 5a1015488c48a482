"""The HTTP API: the seed README's curl interface, the bridge routes, metrics.

Theory of operation
-------------------
HTTP/1.1 is parsed by h11 (sans-I/O, like our own protocol package) in
``api.py`` (connections, limits, CORS, auth); ``routes.py`` and
``api_routes.py`` route; ``messages.py`` holds what they share.  Every route
is a thin call into the scheduler core, followed by the same
commit-before-reply rule as the binary protocol: a submit answers 200 only
once the job is durable in the store.

Routes (paths are percent-decoded; a query string is never part of a name):

=========================================  ===================================
``GET /``                                  stats of every function (JSON)
``GET /<func>``                            stats of one function, ``{}`` if unknown
``POST /`` or ``POST /<func>``             submit (form ``func,name,args,timeout,sched_at``),
                                           or remove with ``act=remove``
``DELETE /<func>``                         drop a function that has no worker
``GET /periodic/status/``                  raw STATUS text (periodic-http-bridge)
``POST /periodic/submit/<func>/<name>/``   body = workload; ``?sched_at=&timeout=``
``POST /periodic/run/<func>/<name>/``      run and wait for the result
``POST /periodic/remove/<func>/<name>/``   remove
``POST /periodic/drop/<func>/``            drop
``GET /metrics``                           Prometheus text format
``GET /api/status``                        JSON list for scripts
``GET /api/overview``                      functions, workers, totals and rates (JSON)
``GET /api/funcs``                         one row per function (JSON)
``GET /api/funcs/<func>``                  one function's row (JSON)
``GET /api/funcs/<func>/jobs``             a page of a function's jobs (JSON)
``GET /api/workers``                       the worker connections (JSON)
``GET /api/throughput``                    events per second over the last minutes
``GET /api/events``                        the overview once a second (server-sent events)
``POST /api/funcs/<func>/jobs/<name>/run`` make a pending job due now
``DELETE /api/funcs/<func>/jobs/<name>``   remove a job
``DELETE /api/funcs/<func>``               drop a function that has no worker
``GET /api/funcs/<func>/jobs/<name>/explain``  why the job has not run (JSON)
``GET|PUT|DELETE /api/funcs/<func>/retry``  the function's retry policy
``GET /api/failed[?func=<func>]``          the failed set
``POST /api/failed/<func>/<name>/retry``   a failed job back to pending
``DELETE /api/failed/<func>[/<name>]``     purge failed jobs
``GET /api/schedules``                     the schedules kept by the server (JSON)
``PUT /api/schedules/<func>/<name>``       add or replace a schedule (JSON body)
``DELETE /api/schedules/<func>/<name>``    remove a schedule
``GET /dashboard``                         the live dashboard (one page, no assets)
``GET /periodic.js``, ``/periodic.d.ts``   the browser / Node client module and its types
=========================================  ===================================

Browsers: the client module is public and cross-origin (``*``).  The rest
answers CORS, preflights included, only for the origins in ``cors``
(``--http-cors``); a request that changes something and carries an
``Origin`` that is neither the server's own nor listed is refused (403)
before anything else, so that no other web page can make a visitor's
browser submit or delete jobs.
"""

from trio_periodic.server.http.api import HttpApi
from trio_periodic.server.http.messages import HTTP_PREFIXES

__all__ = ["HTTP_PREFIXES", "HttpApi"]
