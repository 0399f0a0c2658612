"""Bad input is refused with one sentence, at the first place that can see it: the parameter checks and
preflight before anything runs, or ingest before any training. (One end-to-end run of a refusal inside
the DAG is in test_pipeline_local.)"""

import pytest
from helpers import write_image_folder

from tlpipe import preflight
from tlpipe.cli import main
from tlpipe.cluster import pipeline
from tlpipe.errors import TlpipeError
from tlpipe.steps.common import SPLITS
from tlpipe.steps.ingest import ingest


@pytest.fixture(scope="module")
def transfer():
    return pipeline("transfer")


def defaults_of(transfer) -> dict:
    return {name: spec.default for name, spec in transfer.component_spec.inputs.items()}


@pytest.mark.parametrize("given, expected", [
    ({"target": "imagefolder:/no/such/dir"}, "image folder /no/such/dir does not exist"),
    ({"strategy": "freeze:two"}, "unknown fine-tuning strategy 'freeze:two'"),
    ({"adapt_method": "mmd"}, "unknown adaptation method 'mmd'; use dann, cdan+e, dan, coral, mcc, cdan+mcc, fixmatch, "
                              "adamatch, dann+sdat, cdan+e+sdat, cdan+mcc+sdat, shot, dann+finetune"),
    ({"adapt_bottleneck": -2}, "adapt_bottleneck and adapt_backbone_lr must be 0 or more (or -1"),
    ({"source_augment": "sepia"}, "unknown augmentation 'sepia'; use none, crop, photo, flip, colour, strong, auto"),
    ({"select_by": "test"}, "unknown select_by 'test'; use auto, target-val, source-val, im, snd"),
    ({"gate_alpha": "0"}, "gate_alpha must be above 0 and at most 1, got 0.0"),
    ({"blocks": "[0,9]"}, None),  # not a transfer parameter: refused by name
])
def test_preflight_refuses_bad_parameters_before_anything_runs(transfer, tlpipe_home, given, expected):
    if expected is None:
        with pytest.raises(TlpipeError, match="pipeline tlpipe-transfer has no parameter 'blocks'"):
            preflight.pipeline_arguments(transfer, given)
        return
    arguments = preflight.pipeline_arguments(transfer, given)
    with pytest.raises(TlpipeError) as refused:
        preflight.preflight(arguments, defaults_of(transfer))
    assert expected in str(refused.value)


def test_the_defaults_pass_preflight(transfer, tlpipe_home):
    assert preflight.preflight({}, defaults_of(transfer)) == []


def test_parameters_are_cast_to_their_types_and_bad_values_named(transfer):
    cast = preflight.pipeline_arguments(transfer, {"seed": "3", "lr": "0.5", "source": "digits"})
    assert cast == {"seed": 3, "lr": 0.5, "source": "digits"}
    with pytest.raises(TlpipeError, match="parameter seed='three' is not a valid integer"):
        preflight.pipeline_arguments(transfer, {"seed": "three"})


def test_the_layer_sweep_refuses_blocks_the_backbone_does_not_have(tlpipe_home):
    sweep = pipeline("layer-sweep")
    arguments = preflight.pipeline_arguments(sweep, {"blocks": "[0,9]"})
    with pytest.raises(TlpipeError, match=r"blocks=\[0, 9\]: give whole numbers from 0 to 4"):
        preflight.preflight(arguments, defaults_of(sweep))


def test_a_refusal_on_the_command_line_is_one_line_and_exit_2(tlpipe_home, capsys):
    assert main(["run", "-p", "strategy=freeze:two"]) == 2
    err = capsys.readouterr().err
    assert err.count("tlpipe: error:") == 1 and "unknown fine-tuning strategy 'freeze:two'" in err
    assert "Traceback" not in err
    assert not (tlpipe_home / "pipeline-root").exists()  # nothing ran


def _folders(tmp_path, case: str) -> tuple[str, str]:
    source = write_image_folder(tmp_path / "source", per_class=10)
    target = write_image_folder(tmp_path / "target", per_class=10, seed=1)
    if case == "corrupt":
        (target / "b" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    if case == "classes":
        (target / "c").rename(target / "d")
    return f"imagefolder:{source}", f"imagefolder:{target}"


@pytest.mark.parametrize("case, k, expected", [
    ("corrupt", 5, "target/b/3.png: it is corrupt or truncated"),
    ("classes", 5, "source and target classes differ: only in source ['c'], only in target ['d']"),
    ("k-shot", 50, "outside the held-out 30%, fewer than target_labels_per_class=50"),
])
def test_ingest_refuses_data_that_cannot_be_split_before_any_training(tmp_path, tlpipe_home, case, k, expected):
    source, target = _folders(tmp_path, case)
    out = {name: str(tmp_path / "out" / name) for name in SPLITS}
    with pytest.raises(TlpipeError) as refused:
        ingest(source, target, k, 0, 16, out, "tests", "run-bad")
    assert expected in str(refused.value)
    assert not any((tmp_path / "out" / name).exists() for name in SPLITS)  # no partial split written


@pytest.mark.parametrize("given, expected", [
    ({"batch_size": "0"}, "batch_size must be 1 or more, got 0."),
    ({"source_epochs": "-1"}, "source_epochs must be 1 or more, got -1."),
    ({"adapt_epochs": "0"}, "adapt_epochs must be 1 or more, got 0."),
    ({"target_labels_per_class": "-1"}, "target_labels_per_class must be 0 or more, got -1."),
    ({"target_val_per_class": "-2"}, "target_val_per_class must be 0 or more, got -2."),
    ({"image_size": "0"}, "image_size must be 8 or more, got 0."),
    # The smallest size is found by trying: small-cnn's 5x5 kernels outgrow a 12 px image's feature maps.
    ({"image_size": "12"}, "the small-cnn backbone needs images of at least 16 px, and image_size is 12; set -p "
                           "image_size=16 or more."),
    ({"lr": "0"}, "lr must be more than 0, got 0.0."),
])
def test_numbers_out_of_range_are_refused_before_anything_runs(transfer, tlpipe_home, given, expected):
    with pytest.raises(TlpipeError) as refused:
        preflight.preflight(preflight.pipeline_arguments(transfer, given), defaults_of(transfer))
    assert expected in str(refused.value)


def test_a_training_config_that_would_train_nothing_is_refused():
    from tlpipe.train import TrainConfig

    for bad in ({"epochs": 0}, {"batch_size": 0}, {"epochs": -3}):
        with pytest.raises(TlpipeError, match="training needs epochs and batch_size of 1 or more"):
            TrainConfig(**bad)


def test_every_data_problem_is_found_at_once_from_the_listings_before_anything_runs(tmp_path, tlpipe_home, transfer):
    """Classes that differ, a target class too small for k=10, an empty class: one refusal naming each,
    with advice that holds for all of them (not "lower k" where no k would do)."""
    source = write_image_folder(tmp_path / "source", classes=("a", "b", "c", "e"), per_class=3)
    target = write_image_folder(tmp_path / "target", classes=("a", "b", "d"), per_class=25, seed=1)
    for extra in (target / "a").glob("*.png"):
        if int(extra.stem) >= 4:
            extra.unlink()
    (source / "e").joinpath("0.png").unlink()
    for name in ("1.png", "2.png"):
        (source / "e" / name).unlink()
    arguments = preflight.pipeline_arguments(transfer, {"source": f"imagefolder:{source}", "target": f"imagefolder:{target}"})
    with pytest.raises(TlpipeError) as refused:
        preflight.preflight(arguments, defaults_of(transfer))
    message = str(refused.value)
    assert message.startswith("3 problems, found before anything ran:")
    assert "source classes 'e' have no images" in message
    assert "only in source ['c', 'e'], only in target ['d']" in message
    assert ("target class 'a' has 4 image(s); target_labels_per_class=10 needs at least 11 (10 labelled and one held "
            "out for testing): add images (with target_labels_per_class=10, about 19 per class hold for 95% of seeds).") in message
    assert "lower target_labels_per_class" not in message  # 4 images hold no k for 95% of seeds


def test_a_class_that_splits_only_for_some_seeds_is_warned_of_and_the_advice_works(tmp_path, tlpipe_home, transfer, capsys):
    source = write_image_folder(tmp_path / "source", per_class=30)
    target = write_image_folder(tmp_path / "target", per_class=15, seed=1)
    arguments = preflight.pipeline_arguments(transfer, {"source": f"imagefolder:{source}", "target": f"imagefolder:{target}"})
    preflight.preflight(arguments, defaults_of(transfer))
    err = capsys.readouterr().err
    assert err.count("tlpipe: warning: target class") == 3
    advice = "or lower target_labels_per_class to 7 or less"
    assert advice in err
    lowered = preflight.pipeline_arguments(transfer, {**{k: str(v) for k, v in arguments.items()}, "target_labels_per_class": "7"})
    preflight.preflight(lowered, defaults_of(transfer))
    assert "warning" not in capsys.readouterr().err


def test_the_census_odds_are_the_splits_own(tmp_path):
    """How often a class of n images splits into k labelled and held-out ones, from the listing alone,
    agrees with what split_target does over many seeds."""
    import numpy as np

    from tlpipe.data import ImageSet, census, split_target

    n, k, seeds = 14, 10, 400
    labels = np.r_[np.zeros(n, np.int64), np.ones(60, np.int64)]  # class 1 keeps the unlabelled split non-empty
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 8, 8, 3), dtype=np.uint8)
    data = ImageSet(images, labels, ["small", "large"])
    held = 0
    for seed in range(seeds):
        try:
            split_target(data, k, 0, seed)
            held += 1
        except TlpipeError:
            pass
    expected = census.split_holds(n, k)
    assert abs(held / seeds - expected) < 3 * (expected * (1 - expected) / seeds) ** 0.5 + 0.01, (held / seeds, expected)
    assert census.images_needed(10) == 19 and census.most_labels(19) == 10


def test_a_champion_of_other_classes_is_refused_before_training(tmp_path, tlpipe_home, transfer):
    import mlflow

    from tlpipe import registry, tracking
    from tlpipe.models import Classifier, ModelSpec, save_model

    save_model(tmp_path / "earlier", Classifier(ModelSpec("small-cnn", ["cat", "dog"], 16)))
    client = tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id(client, "earlier")):
        registry.log_and_register(tmp_path / "earlier", "shared", {tracking.PIPELINE_RUN_TAG: "run-earlier"})
    client.set_registered_model_alias("shared", "champion", "1")
    source = write_image_folder(tmp_path / "source", per_class=30)
    target = write_image_folder(tmp_path / "target", per_class=30, seed=1)
    given = {"source": f"imagefolder:{source}", "target": f"imagefolder:{target}", "model_name": "shared"}
    with pytest.raises(TlpipeError, match=r"the champion of 'shared' \(version 1\) predicts classes \['cat', 'dog'\], the "
                                          r"source data has \['a', 'b', 'c'\]; give another model_name"):
        preflight.preflight(preflight.pipeline_arguments(transfer, given), defaults_of(transfer))
    preflight.preflight(preflight.pipeline_arguments(transfer, {**given, "model_name": "fresh"}), defaults_of(transfer))


@pytest.mark.parametrize("given, expected", [
    ({"strategy": "freeze:99"}, "strategy=freeze:99: the small-cnn backbone has 4 blocks; give freeze:0 to freeze:4."),
    ({"strategy": "copy:5"}, "strategy=copy:5: the small-cnn backbone has 4 blocks; give copy:0 to copy:4."),
    ({"adapt_method": "DANN"}, "unknown adaptation method 'DANN'; did you mean 'dann'? use dann,"),
    ({"backbone": "ResNet18"}, "unknown backbone 'ResNet18'; did you mean 'resnet18'? choose one of"),
    ({"strategy": "Linear-Probe"}, "unknown fine-tuning strategy 'Linear-Probe'; did you mean 'linear-probe'? use"),
])
def test_names_in_another_case_get_the_right_one_and_k_stays_within_the_blocks(transfer, tlpipe_home, given, expected):
    with pytest.raises(TlpipeError) as refused:
        preflight.preflight(preflight.pipeline_arguments(transfer, given), defaults_of(transfer))
    assert expected in str(refused.value)


def test_a_misspelt_parameter_name_gets_the_closest_one(transfer):
    with pytest.raises(TlpipeError, match="has no parameter 'Source_Epochs'; did you mean 'source_epochs'\\? its"):
        preflight.pipeline_arguments(transfer, {"Source_Epochs": "1"})


def test_local_paths_are_recorded_as_absolute_locations(tmp_path, monkeypatch):
    """`imagefolder:data/source` names a folder only from where it was typed: the run records where it is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "attrs.csv").write_text("class,a\n")
    given = {"source": "imagefolder:data/source", "target": "digits-m", "images": "imagefolder:s3://team/new",
             "attributes": "attrs.csv", "pretrained_weights": "timm:resnet50.a1_in1k", "publish_to": "out/published",
             "checkpoint_root": "", "seed": 3}
    assert preflight.absolute_locations(given) == given | {
        "source": f"imagefolder:{tmp_path}/data/source", "attributes": f"{tmp_path}/attrs.csv",
        "publish_to": f"{tmp_path}/out/published"}
    assert preflight.absolute_locations({"source": "torchvision:MNIST:data"})["source"] == f"torchvision:MNIST:{tmp_path}/data"


def test_a_source_free_run_is_refused_what_needs_source_images_or_another_models_classes(tmp_path, tlpipe_home):
    """The source-free pipeline: its model must exist and predict the target's classes; a strategy or a
    selection that needs source images is refused, all before anything runs."""
    import mlflow

    from tlpipe import registry, tracking
    from tlpipe.models import Classifier, ModelSpec, save_model

    free = pipeline("source-free")
    defaults = defaults_of(free)
    target = write_image_folder(tmp_path / "target", per_class=30, seed=1)

    def refusal(**given) -> str:
        with pytest.raises(TlpipeError) as refused:
            preflight.preflight(preflight.pipeline_arguments(free, {"target": f"imagefolder:{target}", **given}), defaults)
        return str(refused.value)

    assert "no registered model 'vendor'" in refusal(source_model="models:/vendor@champion")
    save_model(tmp_path / "vendor", Classifier(ModelSpec("small-cnn", ["cat", "dog"], 16)))
    client = tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id(client, "vendor")):
        registry.log_and_register(tmp_path / "vendor", "vendor", {tracking.PIPELINE_RUN_TAG: "run-vendor"})
    assert ("models:/vendor/1 (version 1 of 'vendor') predicts classes ['cat', 'dog'], the target data has "
            "['a', 'b', 'c']; source-free adaptation needs the same classes") in refusal(source_model="models:/vendor/1")
    assert "strategy multitask also trains on source images" in refusal(source_model="models:/vendor/1", strategy="multitask")
    assert "select_by source-val needs source validation images" in refusal(source_model="models:/vendor/1",
                                                                            select_by="source-val")
