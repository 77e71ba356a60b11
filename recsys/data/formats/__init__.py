"""Raw input formats, each a prepare Source."""
