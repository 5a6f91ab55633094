"""ipamd's outside world: EC2 layer and metadata against the simulator, host networking of ENIs."""
