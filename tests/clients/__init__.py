"""Real container clients for the end-to-end tests: private dockerd and containerd daemons.

- `process`: start, poll, stop and clean up daemons (bounded waits, no stray mounts).
- `egress`: a loopback "proxy" that refuses and records every attempt to leave the machine.
- `relay`: a recording HTTP relay between a client and the mirror that can cut a blob mid-body.
- `dockerd`, `containerd`: the two daemons and their CLIs (`docker -H`, `ctr --address`).
"""
