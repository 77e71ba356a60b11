"""Where a model runs: process groups, sharding plans, DistributedModelParallel, checkpoints, export.

Nothing outside this package knows about ranks, process groups or plans.
"""
