"""Start moto (in-process) behind the aurora-migrator test shim.

    python tests/support/moto_shim.py -H 127.0.0.1 -p PORT [-q]

The package next to this file (moto_shim/) takes precedence over this script on
import, so `import moto_shim.app` below loads the package.
"""

import argparse
import logging
import os
import signal
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-H", "--host", default="127.0.0.1", help="address to bind (only this one)")
    ap.add_argument("-p", "--port", type=int, required=True)
    ap.add_argument("-q", "--quiet", action="store_true", help="do not log each request to stderr")
    args = ap.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # moto builds some URLs from it

    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import run_simple

    from moto_shim.app import ShimApp

    if args.quiet:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(args.host, args.port, ShimApp(), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
