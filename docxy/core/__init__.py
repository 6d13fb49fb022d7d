"""The pure core: names, digests, challenges, headers, ranges, errors; no I/O, no framework."""
