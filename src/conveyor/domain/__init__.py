"""Pure rules and data: states, job records, retry math, durations, ids, clocks.

Nothing here does I/O or imports asyncio; every other layer builds on these types.
"""
