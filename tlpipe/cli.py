"""The `tlpipe` command."""

import argparse
import sys

from tlpipe.errors import TlpipeError


def _params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise TlpipeError(f"parameter '{pair}' is not NAME=VALUE.")
        params[name] = value
    return params


def cmd_run(args) -> None:
    from tlpipe import local
    from tlpipe.evaluate import format_table

    result = local.run(args.pipeline, _params(args.param), verbose=args.verbose)
    reg = result.registration
    print()
    print(format_table(result.evaluation))
    print()
    print(f"registered model: {reg.model_name} version {reg.version} (alias challenger), accuracy {reg.accuracy:.2%}")
    if reg.promoted:
        before = f"; previous champion version {reg.previous_champion}" if reg.previous_champion else ""
        print(f"champion: version {reg.version} (promoted{before})")
    else:
        print(f"champion: version {reg.champion_version} kept ({reg.previous_champion_accuracy:.2%} >= {reg.accuracy:.2%})")
    print(f"report: {result.report}")
    print(f"log: {result.log}")
    print(f"pipeline finished in {result.seconds:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlpipe", description="Transfer learning as a production pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a pipeline on this machine (kfp.local)")
    run.add_argument("pipeline", nargs="?", default="transfer", help="pipeline name (default: transfer)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
    run.add_argument("-v", "--verbose", action="store_true", help="show every step's full log, not just progress")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TlpipeError as error:
        print(f"tlpipe: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
