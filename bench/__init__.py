"""Load-test harness for trio_periodic, side by side with beanstalkd, gearmand and redis.

Run it with ``python -m bench`` (``--help`` for the options).  The generator speaks every
protocol with raw sockets (see :mod:`bench.proto`) so that it is not the bottleneck; each
scenario records the generator's CPU time against wall time to show it.
"""

__all__: list[str] = []
