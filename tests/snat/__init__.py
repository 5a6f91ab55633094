"""Node SNAT rule tests."""
