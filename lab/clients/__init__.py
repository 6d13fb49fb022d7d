"""Real clients and the plumbing around them, for end-to-end tests and benchmarks.

- `dockerd`, `containerd`: private daemons and their CLIs (`docker -H`, `ctr --address`),
  each in a directory of its own; `container`: containers and images of such a dockerd.
- `baseimage`: the appliance image's locally made base, and `docker build` of this checkout.
- `egress`: a loopback "proxy" that refuses and records every attempt to leave the machine.
- `relay`: a recording HTTP relay between a client and the mirror that can cut a blob mid-body.
- `forward`: a second loopback address (127.0.0.2) in front of a port, for host-name routing.
- `netns`: a network namespace of the test's own with a veth pair and a forwarder into it.
- `tlstrust`: an /etc/hosts line and dockerd's certs.d entry, removed afterwards.
- `background`: the recording TCP servers the listeners above are made of.
"""
