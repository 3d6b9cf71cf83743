"""Command line: ``python -m fastq demo | bench | unlink NAME``."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":  # the runner parses its own options
        from ._bench import main as bench_main
        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m fastq", description="fastq: shared-memory queues for Python")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    d = sub.add_parser("demo", help="a producer and worker processes sharing a queue, verified end to end")
    d.add_argument("--messages", type=int, default=1_000_000, help="messages to move (default 1,000,000)")
    d.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    d.add_argument("--size", type=int, default=64, help="payload bytes per message (default 64, >= 16)")
    d.add_argument("--batch", type=int, default=256, help="messages per put_many/get_many (1 = single calls)")
    d.add_argument("--name", default=None, help="use a named queue (default: anonymous)")
    sub.add_parser("bench", help="side-by-side comparison with multiprocessing.Queue, faster-fifo, pyzmq "
                   "(python -m fastq bench --help)")
    u = sub.add_parser("unlink", help="remove a named shared-memory queue")
    u.add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "demo":
            from ._demo import run_demo
            return run_demo(args.messages, args.workers, args.size, args.batch, args.name)
        if args.cmd == "unlink":
            from .queue import unlink
            unlink(args.name)
            return 0
    except (ValueError, OSError) as e:
        print(f"fastq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastq: interrupted", file=sys.stderr)
        return 130
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
