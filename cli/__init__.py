"""``vpccni``: the operator command line (sim, introspect, max-pods, conf ...)."""
