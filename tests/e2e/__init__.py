"""End-to-end tests against real parts on loopback (tests/bed/, tests/clients/)."""
