"""Filling KFP output artifacts from a step's result: the one place where components touch KFP objects
beyond their signatures."""


def describe_evaluation(result, evaluation, metrics, confusion, best_model) -> None:
    """Fills an evaluate component's KFP outputs: metrics, the best model's confusion matrix, metadata."""
    for row in result.results:
        metrics.log_metric(f"{row.name}_test_accuracy", row.accuracy)
        if row.val_accuracy is not None:
            metrics.log_metric(f"{row.name}_val_accuracy", row.val_accuracy)
    best = result.result(result.best)
    confusion.log_confusion_matrix(result.classes, best.confusion)
    facts = {"selected": result.best, "selected_by": result.selected_by, "test_accuracy": best.accuracy,
             "val_accuracy": best.val_accuracy}
    evaluation.metadata.update(facts)
    best_model.metadata.update(facts)


def evaluate_into(baselines: dict[str, str], candidates: dict[str, str], best_of: str, given: dict) -> None:
    """An evaluate component's body: the step over its input artifacts (`given`: the component's
    parameters), then its KFP outputs filled."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps.evaluate import evaluate
    from tlpipe.tracking import current_pipeline_run

    path = lambda name: given[name].path  # noqa: E731
    result = exit_on_user_error(evaluate)(
        path("target_test"), baselines=baselines, candidates=candidates, evaluation_out=path("evaluation"),
        report_out=path("report"), best_model_out=path("best_model"), experiment=given["experiment"],
        pipeline_run=current_pipeline_run(), best_of=best_of, source_test=path("source_test"),
        target_val=path("target_val"), source_val=path("source_val"), target_unlabelled=path("target_unlabelled"),
        select_by=given["select_by"])
    describe_evaluation(result, given["evaluation"], given["metrics"], given["confusion"], given["best_model"])
