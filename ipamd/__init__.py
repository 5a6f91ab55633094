"""ipamd: the node daemon that owns the node's ENIs and addresses."""
