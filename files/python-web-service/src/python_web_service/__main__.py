"""Run the service: python -m python_web_service --config FILE [--port N]."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from .app import ConfigState, make_app
from .systemd import notify


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="JSON config file")
    parser.add_argument("--address", default="0.0.0.0", help="listen address")
    parser.add_argument("--port", type=int, default=8080, help="listen port")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    state = ConfigState(args.config)
    state.reload()
    make_app(state).listen(args.port, address=args.address)
    loop = asyncio.get_running_loop()
    # SIGHUP (systemctl reload) reloads the file in place: no restart, no
    # dropped connection.
    loop.add_signal_handler(signal.SIGHUP, state.reload)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("python_web_service").info("listening on %s:%d", args.address, args.port)
    # Only now: a SIGHUP that arrived earlier would have killed the process.
    notify("READY=1")
    await stop.wait()
    notify("STOPPING=1")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
