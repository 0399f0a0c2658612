"""The `tlpipe` commands for a Kubeflow cluster: compile, submit and schedule, and their options."""

import os

from tlpipe.errors import TlpipeError


SCHEDULE_LIST, SCHEDULE_DELETE = "schedule-list", "schedule-delete"


def _params(pairs: list[str]) -> dict[str, str]:
    from tlpipe.preflight import parse_params

    return parse_params(pairs)


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
        checkpoint_root=args.checkpoint_root, nodes=args.nodes, trainer_runtime=args.trainer_runtime,
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
    connection = _connect(args)
    run_id, url = remote.submit(connection, args.pipeline, _cluster(args), _params(args.param), args.experiment,
                                args.run_name, args.namespace)
    print(f"submitted run {run_id}: {url}", flush=True)
    if not args.wait:
        return
    try:
        state, reason = remote.wait(connection, run_id, lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"stopped waiting; run {run_id} goes on on the cluster: {url}") from None
    if state != "SUCCEEDED":
        raise TlpipeError(f"run {run_id} ended {state}{f': {reason.rstrip(chr(46))}' if reason else ''}; its steps' "
                          f"logs are at {url}")
    print(f"run {run_id} SUCCEEDED: {url}")


def cmd_schedule_list(args) -> None:
    from tlpipe import remote

    rows = remote.list_recurring_runs(_connect(args), args.namespace)
    print(f"{'id':<38} {'name':<24} {'cron':<18} status")
    for r in rows:
        print(f"{r['id']:<38} {r['name']:<24} {r['cron']:<18} {r['status']}")


def cmd_schedule_delete(args) -> None:
    from tlpipe import remote

    remote.delete_recurring_run(_connect(args), args.id)
    print(f"deleted recurring run {args.id}")


def cmd_schedule(args) -> None:
    from tlpipe import remote

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
    group.add_argument("--nodes", type=int, default=d.nodes,
                       help="nodes per training step (pretrain, finetune, adapt); above 1 each runs as a Kubeflow Trainer "
                            "TrainJob of this many nodes x --gpus, launched by a small pod (default 1: no Trainer needed)")
    group.add_argument("--trainer-runtime", default=d.trainer_runtime,
                       help="ClusterTrainingRuntime of those TrainJobs, one that runs torchrun (default %(default)s)")
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


def _add_server_options(parser, runs: bool = True) -> None:
    """The server to talk to; with `runs`, also what a new run gets (experiment, parameters)."""
    parser.add_argument("--host", help="Kubeflow Pipelines API URL (default $KF_PIPELINES_ENDPOINT)")
    parser.add_argument("--token", help="bearer token (default $KF_PIPELINES_TOKEN, or the pod's service-account token)")
    parser.add_argument("--namespace", help="profile namespace of a multi-user Kubeflow")
    if not runs:
        return
    parser.add_argument("--experiment", default="tlpipe", help="KFP experiment (default %(default)s)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")


def add_to(commands) -> None:
    """Adds compile, submit and schedule to the `tlpipe` command's subcommands."""
    compile_ = commands.add_parser("compile", help="write KFP IR YAML for a Kubeflow cluster")
    compile_.add_argument("pipeline", nargs="?", default="all", help="pipeline name or all (default)")
    compile_.add_argument("-o", "--output", default="pipelines/compiled", help="directory (default %(default)s)")
    _add_cluster_options(compile_)
    compile_.set_defaults(func=cmd_compile)
    submit = commands.add_parser("submit", help="run a pipeline on Kubeflow Pipelines")
    submit.add_argument("pipeline", help="pipeline name (compiled now) or a compiled .yaml")
    submit.add_argument("--run-name", help="display name of the run")
    submit.add_argument("--wait", action="store_true",
                        help="follow the run to its end, printing its states; exit 2 unless it succeeds")
    _add_server_options(submit)
    _add_cluster_options(submit)
    submit.set_defaults(func=cmd_submit)
    schedule = commands.add_parser("schedule", help="recurring runs on Kubeflow Pipelines: PIPELINE --cron, list, delete ID")
    schedule.add_argument("pipeline", help="pipeline name or compiled .yaml to schedule (`schedule list` and "
                                           "`schedule delete ID` have their own help)")
    schedule.add_argument("--cron", help="six fields, seconds first: \"0 0 3 * * *\" is 03:00 daily")
    schedule.add_argument("--name", help="recurring run name (default tlpipe-PIPELINE)")
    schedule.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default 1)")
    schedule.add_argument("--catchup", action="store_true", help="run the intervals missed while paused (default: no)")
    schedule.add_argument("--replace", action="store_true", help="replace a recurring run of the same name")
    _add_server_options(schedule)
    _add_cluster_options(schedule)
    schedule.set_defaults(func=cmd_schedule)
    # `tlpipe schedule list` and `tlpipe schedule delete ID` (tlpipe.cli.main routes them here): server
    # options only, none of the compile options a new recurring run takes.
    listing = commands.add_parser(SCHEDULE_LIST, prog="tlpipe schedule list", description="the recurring runs on the server")
    _add_server_options(listing, runs=False)
    listing.set_defaults(func=cmd_schedule_list)
    delete = commands.add_parser(SCHEDULE_DELETE, prog="tlpipe schedule delete", description="delete a recurring run")
    delete.add_argument("id", help="the recurring run's ID (`tlpipe schedule list` shows it)")
    _add_server_options(delete, runs=False)
    delete.set_defaults(func=cmd_schedule_delete)
