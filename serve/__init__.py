"""Loads exported bundles (no Lightning import) and serves them over HTTP with LitServe."""
