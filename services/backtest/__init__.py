"""Running history: the fast back-test, walk-forward tuning, the stack replay, the offline demo and
the one report they share.

- ``fast.py``: ``tradingctl backtest``, one process: ``prepare`` (prices, models, every symbol's
  decision inputs) then ``trade`` (the decisions and paper trading's book over a window);
  ``decisions.py`` works a symbol's whole series at once, ``walk.py`` walks the days through paper
  trading's engine and ledger.
- ``tune.py``: ``tradingctl tune``, walk-forward tuning of a grid of settings on Dask.
- ``replay.py``: ``tradingctl replay``, the whole stack of processes on one simulated clock
  (``driver.py`` moves them through time together); ``demo_plan`` is the offline demo's replay.
- ``report.py``: the report of a back-test or a replay (``report.json``, ``report.md``,
  ``trades.csv``, ``signals.csv``, ``equity.html``).
- ``commands.py``: the ``tradingctl`` commands that run them.
"""
