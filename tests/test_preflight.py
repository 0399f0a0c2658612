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
