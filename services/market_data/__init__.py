"""Market data: price sources, the local price store, indicators, data quality and market context."""
