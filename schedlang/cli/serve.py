"""``schedlang serve [FILE] [--port N]``: the schedule explorer in the browser.

The page and everything it does are :mod:`schedlang.serve` (a library module over
:mod:`schedlang.api`); this command parses the arguments,
starts the server (this machine only unless ``--host`` says otherwise) and prints its address.
"""

from __future__ import annotations

import argparse
import sys

from schedlang.cli.common import Command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="a .sched file or std:NAME to start the editor with (default std:zb-h1)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the page reads files "
                        "the program imports, so think before opening it to a network)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")


def _run(args: argparse.Namespace) -> int:
    import logging

    from schedlang import serve

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request on the terminal
    server = serve.make_server(args.file, args.host, args.port)
    url = f"http://{args.host}:{server.server_port}/"
    print(f"schedlang explorer: {url}  (Ctrl-C stops it)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("schedlang serve: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


SERVE = Command("the schedule explorer in the browser: edit, tune, compare, optimize, download", _args, _run)
