"""recsys: recommender-systems training and serving platform.

One Schema drives every stage: data preparation (``recsys.data``), models
(``recsys.models``), sharded training (``recsys.distributed``, ``recsys.train``)
and serving (``services``). See DESIGN.md for the map.
"""

__version__ = "0.1.0"
