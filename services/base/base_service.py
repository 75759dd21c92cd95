"""``BaseService`` under the name the design document uses, so that its example runs as written:

    from services.base.base_service import BaseService
    await BaseService("test").call_service("prediction", "generate_predictions", symbols=["CBA.AX"])

Given a name instead of settings, it reads the settings of the home in ``TRADING_HOME`` and is a
client of that home's services (it is never started; the name is for the reader). Services derive
from ``services.base.service.BaseService``, which this is.
"""

from __future__ import annotations

from typing import Any

from services.base import service
from services.base.config import Settings, load_settings


class BaseService(service.BaseService):
    def __init__(self, name_or_settings: str | Settings = "client", **kwargs: Any) -> None:
        if isinstance(name_or_settings, str):
            self.client_name = name_or_settings
            name_or_settings = load_settings()
        super().__init__(name_or_settings, **kwargs)
