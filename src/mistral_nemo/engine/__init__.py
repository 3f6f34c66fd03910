"""Requests -> batches -> tokens: sampling, KV caches, scheduling and generation loops."""
