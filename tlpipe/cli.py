"""The `tlpipe` command."""

import argparse
import os
import sys
import time
from pathlib import Path

from tlpipe.errors import TlpipeError, as_user_error


def _params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise TlpipeError(f"parameter '{pair}' is not NAME=VALUE (e.g. -p source_epochs=5).")
        params[name] = value
    return params


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

    result = local.run(args.pipeline, _params(args.param), verbose=args.verbose)
    print()
    if result.evaluation:
        print(format_table(result.evaluation))
        print()
    if result.sweep:
        print(format_layer_sweep(result.sweep))
        print()
    if result.registration:
        _print_registration(result.registration)
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
    print(f"champion: version {reg.champion_version} ({reg.verdict})")


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


def _request_limit(text: str) -> tuple[str, str]:
    request, _, limit = text.partition(":")
    return request, limit


def _cluster(args):
    from tlpipe.cluster import Cluster, Resources, Toleration

    default = Cluster()
    selector = _params(args.node_selector) if args.node_selector else default.node_selector
    tolerations = tuple(Toleration.parse(t) for t in args.toleration) if args.toleration else default.tolerations
    return Cluster(
        image=args.image, light_image=args.light_image, gpus=args.gpus, gpu_resource=args.gpu_resource, node_selector=selector,
        tolerations=tolerations,
        train=Resources(*_request_limit(args.train_cpu), *_request_limit(args.train_memory)),
        light=Resources(*_request_limit(args.light_cpu), *_request_limit(args.light_memory)),
        ingest=Resources(*_request_limit(args.ingest_cpu), *_request_limit(args.ingest_memory)),
        score_on=args.score_on, score=Resources(*_request_limit(args.score_cpu), *_request_limit(args.score_memory)),
        shm_size=args.shm_size, retries=args.retries, s3_secret=args.s3_secret, mlflow_secret=args.mlflow_secret,
        checkpoint_root=args.checkpoint_root,
    )


def cmd_compile(args) -> None:
    from tlpipe.cluster import compile_pipeline, pipelines

    names = list(pipelines()) if args.pipeline == "all" else [args.pipeline]
    cluster = _cluster(args)
    for name in names:
        print(f"wrote {compile_pipeline(name, args.output, cluster)}")


def _connect(args):
    from tlpipe import remote

    return remote.connect(args.host, args.token, args.namespace)


def _check_before_submit(args) -> None:
    """The checks `tlpipe run` makes, before anything reaches the cluster: a mistake found on the
    cluster costs a GPU pod and Kubeflow's retries."""
    from tlpipe import remote
    from tlpipe.preflight import preflight

    given = _params(args.param)
    for note in preflight(*remote.arguments_and_defaults(args.pipeline, given, _cluster(args)), on_cluster=True):
        print(f"not checked here: {note}")


def cmd_submit(args) -> None:
    from tlpipe import remote

    _check_before_submit(args)
    run_id, url = remote.submit(_connect(args), args.pipeline, _cluster(args), _params(args.param), args.experiment,
                                args.run_name, args.namespace)
    print(f"submitted run {run_id}: {url}")


def cmd_schedule(args) -> None:
    from tlpipe import remote

    if args.pipeline == "list":
        rows = remote.list_recurring_runs(_connect(args), args.namespace)
        print(f"{'id':<38} {'name':<24} {'cron':<18} status")
        for r in rows:
            print(f"{r['id']:<38} {r['name']:<24} {r['cron']:<18} {r['status']}")
        return
    if args.pipeline == "delete":
        if not args.id:
            raise TlpipeError("schedule delete needs the recurring run's ID (see `tlpipe schedule list`).")
        remote.delete_recurring_run(_connect(args), args.id)
        print(f"deleted recurring run {args.id}")
        return
    if not args.cron:
        raise TlpipeError("schedule needs --cron, six fields with seconds first, e.g. \"0 0 3 * * *\".")
    remote.validate_cron(args.cron)
    _check_before_submit(args)
    recurring_id, url = remote.schedule(
        _connect(args), args.pipeline, _cluster(args), _params(args.param), args.experiment, args.cron,
        name=args.name, max_concurrency=args.max_concurrency, catchup=args.catchup, replace=args.replace,
        namespace=args.namespace,
    )
    print(f"scheduled recurring run {recurring_id} ({args.cron}): {url}")


def _add_cluster_options(parser) -> None:
    from tlpipe.cluster import CPU_IMAGE, DEFAULT_IMAGE, Cluster

    d = Cluster()
    group = parser.add_argument_group("cluster placement (compile options)")
    group.add_argument("--image", default=os.environ.get("TLPIPE_IMAGE", DEFAULT_IMAGE),
                       help="image of the training steps, a versioned tag (default: $TLPIPE_IMAGE or %(default)s)")
    group.add_argument("--light-image", default=os.environ.get("TLPIPE_LIGHT_IMAGE", CPU_IMAGE),
                       help="image of ingest, evaluate and register, without CUDA (default: $TLPIPE_LIGHT_IMAGE or "
                            "%(default)s)")
    group.add_argument("--gpus", type=int, default=d.gpus, help="GPUs per training step; 0 for CPU nodes (default 1)")
    group.add_argument("--gpu-resource", default=d.gpu_resource, help="accelerator resource/type (default %(default)s)")
    group.add_argument("--node-selector", action="append", metavar="KEY=VALUE",
                       help="node label of GPU nodes, repeatable (default nvidia.com/gpu.present=true)")
    group.add_argument("--toleration", action="append", metavar="KEY[=VALUE]:EFFECT",
                       help="taint of GPU nodes to tolerate, repeatable (default nvidia.com/gpu:NoSchedule)")
    group.add_argument("--train-cpu", default=f"{d.train.cpu_request}:{d.train.cpu_limit}", metavar="REQUEST[:LIMIT]",
                       help="training steps (default %(default)s)")
    group.add_argument("--train-memory", default=f"{d.train.memory_request}:{d.train.memory_limit}", metavar="REQUEST[:LIMIT]")
    group.add_argument("--light-cpu", default=f"{d.light.cpu_request}:{d.light.cpu_limit}", metavar="REQUEST[:LIMIT]",
                       help="ingest, evaluate, register")
    group.add_argument("--light-memory", default=f"{d.light.memory_request}:{d.light.memory_limit}", metavar="REQUEST[:LIMIT]")
    group.add_argument("--ingest-cpu", default=f"{d.ingest.cpu_request}:{d.ingest.cpu_limit}", metavar="REQUEST[:LIMIT]",
                       help="ingest decodes and checks images on one worker process per CPU of its limit")
    group.add_argument("--ingest-memory", default=f"{d.ingest.memory_request}:{d.ingest.memory_limit}",
                       metavar="REQUEST[:LIMIT]")
    group.add_argument("--score-on", choices=("gpu", "cpu"), default=d.score_on,
                       help="where evaluate and register score the models: one GPU of a training node, or CPU nodes "
                            "(default %(default)s; cpu when --gpus 0)")
    group.add_argument("--score-cpu", default=f"{d.score.cpu_request}:{d.score.cpu_limit}", metavar="REQUEST[:LIMIT]",
                       help="evaluate and register when they score on CPU")
    group.add_argument("--score-memory", default=f"{d.score.memory_request}:{d.score.memory_limit}",
                       metavar="REQUEST[:LIMIT]", help="enough for the backbone over batches of the test split")
    group.add_argument("--shm-size", default=d.shm_size, help="memory-backed /dev/shm of training and scoring steps (DataLoader workers)")
    group.add_argument("--retries", type=int, default=d.retries, help="retries of a failed training step, backoff from 60 s")
    group.add_argument("--s3-secret", default=d.s3_secret, help="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3")
    group.add_argument("--mlflow-secret", default=d.mlflow_secret, help="Secret with MLFLOW_TRACKING_URI (and optional auth)")
    group.add_argument("--checkpoint-root", default=d.checkpoint_root, metavar="S3_URI",
                       help="default checkpoint_root of the pipelines: where a retried training step finds the checkpoint "
                            "of the pod it replaces (default %(default)s)")


def _add_server_options(parser) -> None:
    parser.add_argument("--host", help="Kubeflow Pipelines API URL (default $KF_PIPELINES_ENDPOINT)")
    parser.add_argument("--token", help="bearer token (default $KF_PIPELINES_TOKEN, or the pod's service-account token)")
    parser.add_argument("--namespace", help="profile namespace of a multi-user Kubeflow")
    parser.add_argument("--experiment", default="tlpipe", help="KFP experiment (default %(default)s)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")


def cmd_weights(args) -> None:
    from tlpipe.models.weights import mirror

    if args.stack == "local":
        from tlpipe import stack

        stack.activate()
    print(f"mirrored {args.name} to {mirror(args.name, args.destination)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlpipe", description="Transfer learning as a production pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a pipeline on this machine (kfp.local)")
    run.add_argument("pipeline", nargs="?", default="transfer", help="pipeline name (default: transfer)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
    run.add_argument("-v", "--verbose", action="store_true", help="show every step's full log, not just progress")
    run.add_argument("--stack", choices=["local"], help="track on the local stack (scripts/stack up): MLflow server, S3")
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
    compile_ = commands.add_parser("compile", help="write KFP IR YAML for a Kubeflow cluster")
    compile_.add_argument("pipeline", nargs="?", default="all", help="pipeline name or all (default)")
    compile_.add_argument("-o", "--output", default="pipelines/compiled", help="directory (default %(default)s)")
    _add_cluster_options(compile_)
    compile_.set_defaults(func=cmd_compile)
    submit = commands.add_parser("submit", help="run a pipeline on Kubeflow Pipelines")
    submit.add_argument("pipeline", help="pipeline name (compiled now) or a compiled .yaml")
    submit.add_argument("--run-name", help="display name of the run")
    _add_server_options(submit)
    _add_cluster_options(submit)
    submit.set_defaults(func=cmd_submit)
    schedule = commands.add_parser("schedule", help="recurring runs on Kubeflow Pipelines: PIPELINE --cron, list, delete ID")
    schedule.add_argument("pipeline", help="pipeline name or compiled .yaml to schedule; or list; or delete")
    schedule.add_argument("id", nargs="?", help="recurring run ID (for delete)")
    schedule.add_argument("--cron", help="six fields, seconds first: \"0 0 3 * * *\" is 03:00 daily")
    schedule.add_argument("--name", help="recurring run name (default tlpipe-PIPELINE)")
    schedule.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default 1)")
    schedule.add_argument("--catchup", action="store_true", help="run the intervals missed while paused (default: no)")
    schedule.add_argument("--replace", action="store_true", help="replace a recurring run of the same name")
    _add_server_options(schedule)
    _add_cluster_options(schedule)
    schedule.set_defaults(func=cmd_schedule)
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
    stack = commands.add_parser("stack", help="the local S3 (SeaweedFS) + MLflow server stack")
    stack.add_argument("action", choices=["up", "down", "status", "env"])
    stack.set_defaults(func=cmd_stack)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as error:
        user_error = as_user_error(error)
        if user_error is None:
            raise
        print(f"tlpipe: error: {user_error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
