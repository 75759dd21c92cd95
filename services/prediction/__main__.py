"""``python -m services.prediction``: run the prediction service."""

import sys

from services.base.runner import run_service
from services.prediction.prediction_service import PredictionService

sys.exit(run_service(PredictionService))
