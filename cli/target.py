"""Options of every command that calls a running server: --target, --tenant, the key, TLS; and --ids."""
from __future__ import annotations

import argparse
import os
from typing import Any

TOKEN_ENV = "VITRINE_AUTH_TOKEN"  # where the CLI finds the API key (or write token) when --token is not given


def add_target(p: argparse.ArgumentParser, token: bool = True) -> None:
    """--target, --tenant and TLS options of every command that calls a server; the API key comes from $VITRINE_AUTH_TOKEN."""
    p.add_argument("--target", required=True, help="HOST:PORT")
    if token:
        p.add_argument("--token", default=None, help=f"legacy shared write secret (default: ${TOKEN_ENV}, which also "
                                                     "holds an API key)")
    p.add_argument("--tenant", default=None, help="the tenant to act on (metadata x-vitrine-tenant)")
    p.add_argument("--tls-ca", default=None, help="PEM CA to verify a TLS server with (default: plaintext)")


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The key, tenant and TLS credentials for a client from add_target's options."""
    from vitrine.server.auth import channel_credentials

    return {"token": getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None, "tenant": args.tenant,
            "credentials": channel_credentials(args.tls_ca) if args.tls_ca else None}


def parse_ids(spec: str) -> list[str]:
    ids = [i.strip() for i in spec.split(",") if i.strip()]
    if not ids:
        raise ValueError("--ids must list at least one id")
    return ids
