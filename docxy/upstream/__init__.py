"""The upstream registry: who it is, the one shared client, and the mirror's own tokens."""
