"""The paper trading service: an exact ledger, trading rules, signal execution, stops and analytics."""
