"""``python -m services.paper_trading``: run the paper trading service."""

import sys

from services.base.runner import run_service
from services.paper_trading.paper_trading_service import PaperTradingService

sys.exit(run_service(PaperTradingService))
