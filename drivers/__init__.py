"""In-tree drivers.  Each registers in the entry-point group ``vpccni.drivers`` exactly as a
third-party driver would (see README, "Writing a driver")."""
