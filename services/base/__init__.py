"""The spine every service is built on: config, RPC, errors, events, clock, logging, BaseService.

Import from the submodules (``services.base.rpc``, ``services.base.errors`` ...); this package
imports nothing heavy, so a light service stays light.
"""
