"""Deployable apps built on the recsys library: ranking API, feature store, retrieval."""
