"""Placement across devices and processes: `sharding` (mesh, shardings, global batches),
`runtime` (multi-host start-up, lost-process errors), `hlo` (reading collectives from compiled
programs).
"""
