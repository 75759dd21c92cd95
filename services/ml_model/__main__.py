"""``python -m services.ml_model``: run the ML model service."""

import sys

from services.base.runner import run_service
from services.ml_model.ml_model_service import MlModelService

sys.exit(run_service(MlModelService))
