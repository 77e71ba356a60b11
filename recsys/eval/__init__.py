"""Offline evaluation of retrievers: full-ranking metrics (``metrics``) over a prepared data set (``retrieval``)."""
