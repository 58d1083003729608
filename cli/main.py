"""The `vitrine` command: one parser over every command module, each a thin harness over the library.

Layers: `cli/` sits on top and may start either door, `server/` (gRPC) or `trainer/` (training); those two import
only the library (`encoders/`, `indexer/`, `ranking/`) and never each other.
"""
from __future__ import annotations

import argparse
import sys

from vitrine.cli import (ab, click_labels, delete, demo, export, gate, gate_text, get, index, info, judgments, keys,
                         registry, retrain, search, serve, simulate_clicks, snapshot, tenants, train, upsert)
from vitrine.cli import eval as eval_  # the module of `vitrine eval`

# One module per command, named by it (`train` is a group whose subcommands have their own modules).
COMMANDS = (index, export, serve, search, info, upsert, delete, get, snapshot, keys, tenants, demo, train,
            simulate_clicks, click_labels, gate, gate_text, registry, retrain, eval_, ab, judgments)
DISTRIBUTION = "vitrine-search"
# The extra (pyproject.toml) that provides each heavy top-level module, for the one line a client-only install gets.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("faiss", "torch", "torchvision", "open_clip", "sentence_transformers", "transformers", "lightgbm",
                     "PIL", "tantivy", "numpy", "tqdm", "prometheus_client", "onnx", "onnxruntime", "grpc_health",
                     "grpc_reflection", "safetensors", "huggingface_hub", "tokenizers", "scipy", "sklearn"), "server"),
    **dict.fromkeys(("mlflow", "datasets", "accelerate", "peft", "efficientnet_lite_pytorch"), "train"),
    **dict.fromkeys(("ray", "pyarrow"), "ray"),
    "matplotlib": "plot",
}


def version() -> str:
    """The installed distribution's version ("unknown" when run from a tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitrine", description="Multimodal product search.")
    parser.add_argument("--version", action="version", version=f"vitrine {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def missing_extra(exc: ImportError, command: str) -> str:
    """One line for an ImportError: which extra to install when a known heavy module is missing, else its message."""
    module = (getattr(exc, "name", None) or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if not isinstance(exc, ModuleNotFoundError) or extra is None:
        return str(exc)   # our own ImportErrors already name what to install
    return (f"vitrine {command} needs the {extra} extra (module {module!r} is not installed): "
            f"pip install '{DISTRIBUTION}[{extra}]'")


def os_error(exc: OSError) -> str:
    """One line for a file the user named that cannot be read or written: what is wrong and what to do."""
    where = exc.filename if exc.filename is not None else ""
    if exc.errno is None or not where:
        return str(exc)   # raised with our own sentence
    if isinstance(exc, PermissionError):
        return f"{where}: permission denied; check its owner and mode (ls -l), or choose a path this user may use"
    if isinstance(exc, IsADirectoryError):
        return f"{where} is a directory; give the path of a file"
    if isinstance(exc, NotADirectoryError):
        return f"{where}: a part of this path is a file, not a directory"
    if isinstance(exc, FileNotFoundError):
        return f"{where} does not exist"
    if isinstance(exc, FileExistsError):
        return f"{where} already exists and is not a directory; choose another path"
    return f"{where}: {exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    from vitrine.indexer.lock import BundleLocked
    from vitrine.cli.logs import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    # Every failure a user can cause is one line on stderr naming the cause and the fix, exit 2 (a server's answer,
    # exit 1); anything else is a bug and keeps its traceback.
    try:
        return args.handler(args)
    except UnicodeDecodeError as exc:   # a ValueError that names neither the file nor the fix
        print(f"error: a file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8", file=sys.stderr)
        return 2
    except (ValueError, BundleLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {os_error(exc)}", file=sys.stderr)
        return 2
    except ImportError as exc:   # an optional extra is missing
        print(f"error: {missing_extra(exc, args.command)}", file=sys.stderr)
        return 2
    except Exception as exc:
        # A server's answer. grpc is looked up, not imported: commands that call no server (index, train) load
        # neither grpc nor its health and reflection plugins.
        grpc = sys.modules.get("grpc")
        if grpc is None or not isinstance(exc, grpc.RpcError):
            raise
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
