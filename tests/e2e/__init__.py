"""End-to-end tests against real parts on loopback (lab/bed/, lab/clients/)."""
