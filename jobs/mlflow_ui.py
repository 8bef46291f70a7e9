"""Serve the MLflow UI on the configured tracking backend (the `make mlflow` target).

    python -m jobs.mlflow_ui [--host 127.0.0.1] [--port 5000] [--config F]

Runs ``mlflow server`` on ``mlflow_tracking_uri`` (default ``sqlite:///./mlruns/mlflow.db``)
with ``mlflow_artifact_root`` as the artifact root, in the foreground (Ctrl-C stops it).
When the tracking URI already is an HTTP server there is nothing to start: it says where
to look instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.privacy.secrets import redact_text, redact_url


def server_command(tracking_uri: str, artifact_root: str, host: str, port: int) -> list[str]:
    """The argv of ``mlflow server`` for a local backend store."""
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [
        mlflow_bin, "server",
        "--backend-store-uri", tracking_uri,
        "--default-artifact-root", artifact_root,
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on")
    parser.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    uri = cfg.mlflow_tracking_uri
    if uri.startswith(("http://", "https://")):
        print(f"MLflow runs as a server already: open {redact_url(uri)} in a browser")
        return 0
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            print(f"no MLflow database at {db} yet: run `make demo` first (or train a model)",
                  file=sys.stderr)
            return 2
    artifact_root = cfg.mlflow_artifact_root
    if "://" not in artifact_root:
        artifact_root = str(Path(artifact_root).resolve())
    cmd = server_command(uri, artifact_root, args.host, args.port)
    print(f"MLflow UI on http://{args.host}:{args.port} (backend {redact_url(uri)}); Ctrl-C to stop",
          flush=True)
    if args.dry_run:
        print(redact_text(" ".join(cmd)))
        return 0
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               MLFLOW_DISABLE_TELEMETRY="true")
    os.execvpe(cmd[0], cmd, env)  # replaces this process: Ctrl-C goes straight to mlflow
    return 0  # pragma: no cover - exec does not return


if __name__ == "__main__":
    raise SystemExit(main())
