"""Running history: the stack replay, the offline demo, the fast back-test and their one report.

- ``replay.py``: ``tradingctl replay``, the whole stack of processes on one simulated clock
  (``driver.py`` moves them through time together); ``demo_plan`` is the offline demo's replay.
- ``report.py``: the report both write (``report.json``, ``report.md``, ``trades.csv``,
  ``equity.html``).
- ``commands.py``: the ``tradingctl`` commands that run them.
"""
