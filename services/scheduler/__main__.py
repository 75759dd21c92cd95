"""``python -m services.scheduler``: run the scheduler service."""

import sys

from services.base.runner import run_service
from services.scheduler.scheduler_service import SchedulerService

sys.exit(run_service(SchedulerService))
