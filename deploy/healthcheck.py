"""Container health check: exit 0 when the local server's gRPC health service says SERVING, 1 otherwise.

    python healthcheck.py [HOST:PORT]        # default $VITRINE_HEALTH_TARGET, else 127.0.0.1:50051

Health is NOT_SERVING while a bundle loads and while the server drains on SIGTERM. Plaintext only: a server started
with --tls-cert needs grpc_health_probe -tls (Kubernetes' own grpc probe cannot speak TLS either).
"""
from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    target = argv[0] if argv else os.environ.get("VITRINE_HEALTH_TARGET", "127.0.0.1:50051")
    try:
        with grpc.insecure_channel(target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3.0).status
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
