"""Prefect-native operations: outcome events, hooks (pings, webhook), metrics."""
