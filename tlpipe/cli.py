"""The `tlpipe` command."""

import argparse
import sys
import time

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

    if args.stack == "local":
        from tlpipe import stack

        stack.activate()

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


def _registry_client(args):
    from tlpipe import tracking

    if args.stack == "local":
        from tlpipe import stack

        stack.activate()
    tracking.check_reachable()
    return tracking.configure()


def cmd_registry(args) -> None:
    from tlpipe import registry

    rows = registry.versions(_registry_client(args), args.model_name)
    columns = ["version", "aliases", "accuracy", "candidate", "method", "created", "pipeline_run", "gate"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns))


def cmd_rollback(args) -> None:
    from tlpipe import registry

    old, new = registry.rollback(_registry_client(args), args.model_name)
    print(f"champion of '{args.model_name}' moved back from version {old} to version {new}")


def cmd_stack(args) -> None:
    from tlpipe import stack

    if args.action == "up":
        started = time.time()
        env = stack.up()
        print(f"stack up in {time.time() - started:.1f} s: S3 {env['AWS_ENDPOINT_URL_S3']} (bucket {stack.BUCKET}), "
              f"MLflow {env['MLFLOW_TRACKING_URI']}")
        print(f"use it: tlpipe run --stack local, or `source {stack.directory() / 'stack.env'}`")
    elif args.action == "down":
        stack.down()
        print("stack stopped; its data stays in " + str(stack.directory()))
    elif args.action == "status":
        if not stack.running():
            raise TlpipeError("the local stack is not running; start it with `scripts/stack up`.")
        env = stack.environment(stack.config())
        print(f"running: S3 {env['AWS_ENDPOINT_URL_S3']}, MLflow {env['MLFLOW_TRACKING_URI']}")
    else:  # env: for `eval "$(tlpipe stack env)"`
        for key, value in stack.environment(stack.config()).items():
            print(f"export {key}={value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlpipe", description="Transfer learning as a production pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a pipeline on this machine (kfp.local)")
    run.add_argument("pipeline", nargs="?", default="transfer", help="pipeline name (default: transfer)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
    run.add_argument("-v", "--verbose", action="store_true", help="show every step's full log, not just progress")
    run.add_argument("--stack", choices=["local"], help="track on the local stack (scripts/stack up): MLflow server, S3")
    run.set_defaults(func=cmd_run)
    for name, func, text in (("registry", cmd_registry, "list registered versions with metrics and lineage"),
                             ("rollback", cmd_rollback, "move champion back to the version it replaced")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--model-name", default="tlpipe")
        sub.add_argument("--stack", choices=["local"], help="use the local stack's MLflow server")
        sub.set_defaults(func=func)
    stack = commands.add_parser("stack", help="the local S3 (SeaweedFS) + MLflow server stack")
    stack.add_argument("action", choices=["up", "down", "status", "env"])
    stack.set_defaults(func=cmd_stack)
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
