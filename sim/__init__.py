"""The local VPC simulator: EC2 emulator, instance-metadata emulator, VPC fabric of namespaces."""
