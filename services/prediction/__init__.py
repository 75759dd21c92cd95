"""The prediction service: BUY/HOLD/SELL signals from technicals, sentiment, ML and market context."""
