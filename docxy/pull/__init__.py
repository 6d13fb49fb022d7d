"""The pull path: blobs and manifests through the cache, answered as outcomes."""
