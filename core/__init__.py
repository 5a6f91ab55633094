"""vpccni core runtime: CNI invocation, schemas, version negotiation, dispatch, errors.

Import cost matters here: the per-pod plugin imports this package on every call.
Nothing in ``vpccni.core`` may import boto3, botocore, kubernetes, moto or the simulator.
"""
