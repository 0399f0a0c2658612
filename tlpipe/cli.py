"""The `tlpipe` command."""

import argparse
import shutil
import sys
import time
from pathlib import Path

from tlpipe import kubeflow_commands
from tlpipe.errors import TlpipeError, as_user_error


def _params(pairs: list[str]) -> dict[str, str]:
    from tlpipe.preflight import parse_params

    return parse_params(pairs)


def cmd_params(args) -> None:
    from tlpipe.cluster import pipeline, pipelines
    from tlpipe.preflight import format_parameters

    names = list(pipelines()) if args.pipeline == "all" else [args.pipeline]
    print("\n\n".join(format_parameters(pipeline(name)) for name in names))


def cmd_examples(args) -> None:
    from tlpipe.data.examples import CLASSES, make_folder

    size = make_folder(Path(args.folder), args.images, args.seed, args.shift)
    print(f"{args.images} photos in {CLASSES} class folders under {args.folder} ({size / 1e6:.1f} MB); use it as "
          f"-p source=imagefolder:{args.folder} (or target=...)")


def cmd_run(args) -> None:
    from tlpipe import local
    from tlpipe.analysis import format_layer_sweep
    from tlpipe.report import format_table

    if args.stack == "local":
        from tlpipe import stack

        stack.activate()

    if args.resume and (args.param or args.pipeline):
        raise TlpipeError(f"--resume {args.resume} goes on with that run's own pipeline and parameters; "
                          "give neither a pipeline nor -p with it.")
    try:
        result = local.run(args.pipeline or "transfer", _params(args.param), verbose=args.verbose, resumed=args.resume)
    except local.RunFailed as failed:  # what it measured before the failure is still worth reading
        if failed.result.evaluation:
            print(f"\nthe run failed after evaluate; what it measured:\n\n"
                  f"{format_table(failed.result.evaluation)}\n\nreport (without the registry's section): "
                  f"{failed.result.report}", flush=True)
        raise
    print()
    if result.evaluation:
        print(format_table(result.evaluation))
        print()
    if result.sweep:
        print(format_layer_sweep(result.sweep))
        print()
    if result.registration:
        _print_registration(result.registration)
    if result.predictions:
        _print_predictions(result.predictions)
    if result.report:
        print(f"report: {result.report}")
    print(f"log: {result.log}")
    _print_mlflow_run(result.run_id)
    print()
    if result.sequential:
        print(local.format_timing(result))
    else:
        print("steps ran side by side (ParallelFor): no per-step timing table")
    print(f"pipeline finished in {result.seconds:.0f} s")


def _print_mlflow_run(pipeline_run: str) -> None:
    from tlpipe import settings, tracking

    found = tracking.pipeline_run_ids(pipeline_run)
    if not found:
        return
    uri = settings.tracking_uri()
    where = "" if uri.startswith(("http://", "https://")) else f" (open `mlflow ui --backend-store-uri {uri}`, then that path)"
    print(f"MLflow run {found[0]}: {tracking.run_link(found[0])}{where}")


def _print_registration(reg) -> None:
    print(f"registered model: {reg.model_name} version {reg.version} (alias {reg.alias}), test accuracy {reg.accuracy:.2%}")
    if reg.previous_champion is not None and reg.p_value is not None:
        print(f"gate: on the same {reg.test_images} test images, v{reg.version} {reg.accuracy:.2%} vs champion "
              f"v{reg.previous_champion} {reg.previous_champion_accuracy:.2%}; only v{reg.version} right on "
              f"{reg.challenger_only}, only v{reg.previous_champion} on {reg.champion_only}; "
              f"one-sided exact McNemar p = {reg.p_value:.3g}")
    if reg.chance is not None:
        print(f"chance: {reg.chance:.2%} (always the most frequent test class)")
    if reg.champion_version:
        print(f"champion: version {reg.champion_version} ({reg.verdict})")
    else:
        print(f"no champion: {reg.verdict}")


def _print_predictions(folder: Path) -> None:
    from tlpipe.steps.predict import PREDICTIONS_FILE, SUMMARY_FILE, UNSURE_BELOW, PredictionSummary

    s = PredictionSummary.load(folder / SUMMARY_FILE)
    print(f"predicted {s.count} images of {s.images} with {s.model_name} version {s.version} ({s.model})")
    width = max(len("class"), *(len(c) for c in s.classes))
    print(f"{'class':<{width}} {'images':>8} {'share':>7}")
    for name, n in s.predicted.items():
        print(f"{name:<{width}} {n:>8} {n / s.count:>7.1%}")
    print(f"mean confidence {s.mean_confidence:.1%}; {s.unsure_share:.1%} below {UNSURE_BELOW:.0%}; mean entropy "
          f"{s.mean_entropy:.2f} (0 certain, 1 uniform over the classes)")
    if s.folder_agreement is not None:
        print(f"folders named after a class: {s.folder_count} images, {s.folder_agreement:.1%} predicted as their "
              "folder's class (a test figure only if the model never trained on these images)")
    if s.skipped:
        print(f"left out, not PNG or JPEG: {s.skipped_count} file{'s' if s.skipped_count > 1 else ''} ({', '.join(s.skipped[:3])}"
              f"{', ...' if s.skipped_count > 3 else ''})")
    print(f"predictions: {folder / PREDICTIONS_FILE}")


def _registry_client(args):
    from tlpipe import tracking

    if args.stack == "local":
        from tlpipe import stack

        stack.activate()
    tracking.check_reachable()
    return tracking.configure()


def cmd_screenshot(args) -> None:
    from tlpipe import browser

    report = Path(args.report)
    if not report.is_file():
        raise TlpipeError(f"report {report} does not exist.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for width in args.widths:
        png = out / f"{report.stem}-{width}px.png"
        page_width, height = browser.screenshot(report, png, width)
        fits = "fits" if page_width <= width else f"is {page_width} px wide: wider than the window"
        print(f"{png}: {width} x {height} px; the page {fits}")


def cmd_registry(args) -> None:
    from tlpipe import registry

    rows = registry.versions(_registry_client(args), args.model_name)
    columns = ["version", "aliases", "accuracy", "candidate", "method", "created", "pipeline_run", "evidence", "p", "gate"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns))


def cmd_rollback(args) -> None:
    from tlpipe import registry

    old, new = registry.rollback(_registry_client(args), args.model_name, args.to)
    print(f"champion of '{args.model_name}' moved from version {old} to version {new}")


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


def cmd_weights(args) -> None:
    from tlpipe.models.weights import mirror

    if args.stack == "local":
        from tlpipe import stack

        stack.activate()
    print(f"mirrored {args.name} to {mirror(args.name, args.destination)}")


def cmd_images(args) -> None:
    from tlpipe.images import build, engine, steps

    found = engine.find(args.engine)
    if args.action == "build":
        started = time.time()
        bases = {role: image for role, image in (("trainer", args.trainer_base), ("cpu", args.cpu_base)) if image}
        built = build.build(found, args.registry, args.local_base, args.index_url, args.torch_index_url, args.ca_bundle,
                            bases)
        print(f"\nbuilt with {found.name} in {time.time() - started:.0f} s:")
        for image in built:
            print(f"  {image.line()}")
    if args.action == "check" or args.check:
        from tlpipe import settings

        print("\nrunning every step of the transfer pipeline in its image, as its pod would:", flush=True)
        work = settings.home() / "images-check" / time.strftime("%Y%m%d-%H%M%S")
        print(steps.check(found, build.tags(args.registry), work)[1])
        shutil.rmtree(work / "pipeline-root", ignore_errors=True)  # the log stays


# Each command's help ends with these (tests/test_cli.py parses every one of them).
EXAMPLES = {
    "run": ["tlpipe run", "tlpipe run -p source=imagefolder:data/source -p target=imagefolder:data/target -p model_name=photos",
            "tlpipe run predict -p images=imagefolder:data/new -p model=models:/photos@champion",
            "tlpipe run retrain --stack local -p target=imagefolder:s3://team/photos/target",
            "tlpipe run --resume transfer-20261204-031500-1a2b3c"],
    "params": ["tlpipe params", "tlpipe params predict", "tlpipe params all"],
    "examples": ["tlpipe examples data/source --images 2000", "tlpipe examples data/target --images 600 --shift 1.0"],
    "registry": ["tlpipe registry", "tlpipe registry --model-name photos --stack local"],
    "rollback": ["tlpipe rollback --model-name photos", "tlpipe rollback --model-name photos --to 3"],
    "compile": ["tlpipe compile", "tlpipe compile transfer --image registry.example.com/tlpipe/trainer:0.1.0 --gpus 2"],
    "submit": ["tlpipe submit transfer --host https://kubeflow.example.com/pipeline -p target=imagefolder:s3://team/target --wait",
               "tlpipe submit pipelines/compiled/retrain.yaml --host http://localhost:8080"],
    "schedule": ['tlpipe schedule retrain --cron "0 0 3 * * *" --host http://localhost:8080 -p model_name=photos'],
    "schedule-list": ["tlpipe schedule list --host http://localhost:8080"],
    "schedule-delete": ["tlpipe schedule delete 5f0e4c1e-0000-4000-8000-000000000000 --host http://localhost:8080"],
    "screenshot": ["tlpipe screenshot .tlpipe/reports/transfer-20261204-031500-1a2b3c.html --out shots"],
    "weights": ["tlpipe weights mirror timm:resnet50.a1_in1k s3://team/weights --stack local"],
    "images": ["tlpipe images build", "tlpipe images build --local-base --check",
               "tlpipe images build --registry registry.example.com/ml --index-url https://pypi.internal/simple "
               "--ca-bundle /etc/ssl/certs/corporate.pem", "tlpipe images check"],
    "stack": ["tlpipe stack up", 'eval "$(tlpipe stack env)"', "tlpipe stack down"],
}
STACK_ACTIONS = ("up: start SeaweedFS (S3) and the MLflow server on this machine (their data under $TLPIPE_HOME/stack); "
                 "down: stop them, keeping their data; status: whether they run, and where; env: the export lines that "
                 "point MLflow, boto3 and tlpipe at them")


# A proxy's CA in the machine's bundle reaches the images' builds too (a build secret, in no layer).
DEFAULT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _versions() -> str:
    from importlib.metadata import version

    return f"tlpipe {version('tlpipe')} ({', '.join(f'{d} {version(d)}' for d in ('torch', 'torchvision', 'kfp', 'mlflow'))})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlpipe", description="Transfer learning as a production pipeline.",
                                     epilog="`tlpipe COMMAND --help` shows a command's options and examples.")
    parser.add_argument("--version", action="version", version=_versions())
    shown = [n for n in EXAMPLES if not n.startswith("schedule-")]
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(shown) + "}")
    run = commands.add_parser("run", help="run a pipeline on this machine (kfp.local)")
    run.add_argument("pipeline", nargs="?", help="pipeline name (default: transfer)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
    run.add_argument("-v", "--verbose", action="store_true", help="show every step's full log, not just progress")
    run.add_argument("--stack", choices=["local"], help="track on the local stack (scripts/stack up): MLflow server, S3")
    run.add_argument("--resume", metavar="RUN_ID", default="",
                     help="go on with a run that was interrupted, killed or failed on this machine, from its last checkpoint")
    run.set_defaults(func=cmd_run)
    params = commands.add_parser("params", help="list a pipeline's parameters: name, type, default and meaning")
    params.add_argument("pipeline", nargs="?", default="transfer", help="pipeline name or all (default: transfer)")
    params.set_defaults(func=cmd_params)
    examples = commands.add_parser("examples", help="write an example photo folder (made here, no download)")
    examples.add_argument("folder", help="where the class sub-folders go")
    examples.add_argument("--images", type=int, default=1000, help="how many photos (default %(default)s)")
    examples.add_argument("--seed", type=int, default=0, help="which photos (default %(default)s)")
    examples.add_argument("--shift", type=float, default=0.0,
                          help="how far the look shifts, as a second camera would (a target domain: 1.0)")
    examples.set_defaults(func=cmd_examples)
    for name, func, text in (("registry", cmd_registry, "list registered versions with metrics and lineage"),
                             ("rollback", cmd_rollback, "move champion back to the version it replaced")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--model-name", default="tlpipe")
        sub.add_argument("--stack", choices=["local"], help="use the local stack's MLflow server")
        sub.set_defaults(func=func)
    rollback = commands.choices["rollback"]
    rollback.add_argument("--to", default="", metavar="VERSION",
                          help="the version to make champion (default: the one the champion replaced)")
    kubeflow_commands.add_to(commands)
    shot = commands.add_parser("screenshot", help="full-page PNGs of a report in headless Chromium")
    shot.add_argument("report", help="an HTML report (e.g. $TLPIPE_HOME/reports/RUN.html)")
    shot.add_argument("--out", default=".", help="directory of the PNGs (default: here)")
    shot.add_argument("--widths", type=int, nargs="+", default=[1400, 700], help="window widths (default 1400 700)")
    shot.set_defaults(func=cmd_screenshot)
    weights = commands.add_parser("weights", help="pretrained weights: mirror a hub checkpoint for machines with no network")
    weights_actions = weights.add_subparsers(dest="action", required=True)
    mirror = weights_actions.add_parser("mirror", help="copy hub weights (downloaded or cached) to S3 as safetensors")
    mirror.add_argument("name", help="ResNet50_Weights.IMAGENET1K_V2, hf-hub:<repo id> or timm:<model>.<tag>")
    mirror.add_argument("destination", help="s3://bucket/prefix (or a folder); pass the file it prints as pretrained_weights")
    mirror.add_argument("--stack", choices=["local"], help="use the local stack's S3")
    mirror.set_defaults(func=cmd_weights)
    images = commands.add_parser("images", help="build the trainer and CPU images; run the pipeline's steps in them")
    images.add_argument("action", choices=["build", "check"],
                        help="build: both images, tagged as `tlpipe compile` names them; check: every step of the "
                        "transfer pipeline run in its image as its pod would, on the local stack")
    images.add_argument("--check", action="store_true", help="after building, run the check")
    images.add_argument("--registry", default="", help="tag as REGISTRY/tlpipe-trainer:VERSION (default: ghcr.io/tlpipe)")
    images.add_argument("--local-base", action="store_true",
                        help="bases made here (debootstrap; PyPI's torch), for machines that reach no image registry")
    images.add_argument("--trainer-base", default="", help="the trainer's base image, e.g. a mirror's copy of the "
                        "Dockerfile's CUDA PyTorch runtime (default: the Dockerfile's)")
    images.add_argument("--cpu-base", default="", help="the CPU image's base (default: the Dockerfile's python:3.11-slim)")
    images.add_argument("--index-url", default="", help="the package index (default: PyPI), e.g. a mirror or proxy")
    images.add_argument("--torch-index-url", default="",
                        help="the CPU image's torch index (default: PyTorch's CPU wheels; the index with --local-base)")
    images.add_argument("--ca-bundle", default=DEFAULT_CA_BUNDLE if Path(DEFAULT_CA_BUNDLE).is_file() else "",
                        help="CA certificates the build's pip trusts, passed as a build secret that no layer keeps "
                        "(default: this machine's, %(default)s; '' for none)")
    images.add_argument("--engine", choices=["docker", "buildah"], default="",
                        help="default: Docker when an engine answers, else buildah")
    images.set_defaults(func=cmd_images)
    stack = commands.add_parser("stack", help="the local S3 (SeaweedFS) + MLflow server stack")
    stack.add_argument("action", choices=["up", "down", "status", "env"], help=STACK_ACTIONS)
    stack.set_defaults(func=cmd_stack)
    for name, sub in commands.choices.items():
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        sub.epilog = "examples:\n" + "\n".join(f"  {example}" for example in EXAMPLES[name])
    return parser


def routed(argv: list[str]) -> list[str]:
    """`schedule list` and `schedule delete` are commands of their own, with their own options and help."""
    if argv[:1] == ["schedule"] and argv[1:2] in (["list"], ["delete"]):
        return [f"schedule-{argv[1]}", *argv[2:]]
    return list(argv)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(routed(sys.argv[1:] if argv is None else argv))
    try:
        args.func(args)
    except KeyboardInterrupt as interrupted:  # Ctrl-C or SIGTERM: one sentence, no traceback
        print(f"tlpipe: {interrupted or 'interrupted'}", file=sys.stderr, flush=True)
        from tlpipe.lifetime import end_within

        end_within(30, "interrupted; the process did not end within 30 s of it, so it ended there")
        return 130
    except Exception as error:
        user_error = as_user_error(error)
        if user_error is None:
            raise
        print(f"tlpipe: error: {user_error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
