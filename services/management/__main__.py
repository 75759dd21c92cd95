"""``python -m services.management``: the same commands as ``tradingctl``."""

import sys

from services.management.service_manager import main

sys.exit(main())
