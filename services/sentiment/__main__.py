"""``python -m services.sentiment``: run the sentiment service."""

import sys

from services.base.runner import run_service
from services.sentiment.sentiment_service import SentimentService

sys.exit(run_service(SentimentService))
