"""Value types and pure functions that every other part shares.

Owns: bars (``Bar`` tuples, series ids, datapoint conversion), intervals (names, bucketing,
date formatting) and coverage (which time spans of a series are known).
May import: nothing of ``backend`` but ``errors``. No I/O, no asyncio, no processes.
"""
