"""Candidate generation: the ANN index over a retriever's item vectors (``index``) and top-N for a user
(``service``), which the ranking service uses as its candidate source."""
