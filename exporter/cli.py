"""Entry point of the ``storm-termination-exporter`` command."""

from __future__ import annotations

import sys

from exporter import logs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "simulate":
        from exporter import simulate

        return simulate.main(argv[1:])
    if argv and argv[0] == "diagnose":
        from exporter import diagreport

        logs.setup("warning", "logfmt")
        return diagreport.main(argv[1:])
    from exporter import app
    from exporter.config import parse_args

    config = parse_args(argv)
    logs.setup(config.log_level, config.log_format)
    return app.run(config)


if __name__ == "__main__":
    sys.exit(main())
