"""The shared tier: blobs kept in an S3-compatible object store for several mirror replicas.

The local disk cache (``docxy.cache``) stays where every fill happens and every byte is
verified; the shared tier is only a *source* for a local fill (before the upstream) and a
*sink* after a fill from the upstream committed (a bounded background upload).

    keys      object keys and URLs (pure)
    objects   the object store's requests (HEAD, GET, PUT), signed with SigV4
    uploads   the bounded upload queue
    tier      SharedTier: what the pull path asks, and what /health and /metrics show
"""
