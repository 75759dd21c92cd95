"""``python -m services.market_data``: run the market data service."""

import sys

from services.base.runner import run_service
from services.market_data.market_data_service import MarketDataService

sys.exit(run_service(MarketDataService))
