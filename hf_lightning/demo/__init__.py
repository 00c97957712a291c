"""Offline quickstart assets: a synthetic sentiment dataset and a matching word-level tokenizer."""
