"""Registering a selected model behind the gate, rolling the champion back, and listing versions."""

import time
from pathlib import Path

from mlflow.exceptions import MlflowException

from tlpipe.data import ImageSet
from tlpipe.distributed import device
from tlpipe.errors import TlpipeError
from tlpipe.evaluate import chance_accuracy, score
from tlpipe.models import load_model
from tlpipe.registry.champion import champion_model, champion_version, unanswered
from tlpipe.registry.gate import VERDICT_TAG, Gate, Registration, gate_evidence, paired_comparison
from tlpipe.registry.lock import gate_lock
from tlpipe.registry.models import log_and_register
from tlpipe.tracking import PIPELINE_RUN_TAG

PREVIOUS_CHAMPION_TAG = "tlpipe.previous_champion"
SPLIT_SEED_TAG = "tlpipe.split_seed"  # the seed that cut the version's splits (tlpipe.data.splits)
LINEAGE_TAG = "tlpipe.lineage"  # JSON: validation accuracy, selection, training data, code, every split's hash


def _may_have_seen(champion, tags: dict[str, str]) -> str:
    """Why the champion may have trained on this run's test images, or "". Splits are cut by each image's
    identity and the seed: under one seed an image is held out in every run or in none, under another
    seed this run's test images may have been the champion's training images."""
    theirs, ours = champion.tags.get(SPLIT_SEED_TAG), tags.get(SPLIT_SEED_TAG)
    if theirs is None or ours is None or theirs == ours:  # the same split (or a version from before the tag)
        return ""
    return (f"its splits were cut with seed {theirs} and this run's with seed {ours}, so it may have trained on "
            f"these test images; rerun with -p seed={theirs} to compare them")


def _version_of_run(client, model_name: str, pipeline_run: str):
    query = f"name='{model_name}' and tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}'"
    found = client.search_model_versions(query)
    return found[0] if found else None


def register(client, model_dir: str | Path, model_name: str, test: ImageSet, tags: dict[str, str],
             gate: Gate = Gate()) -> Registration:
    """Registers `model_dir` (once per tags[PIPELINE_RUN_TAG]) and gates the champion alias."""
    challenger = load_model(model_dir, device())[0]
    existing = _version_of_run(client, model_name, tags[PIPELINE_RUN_TAG])
    version = str(existing.version) if existing else log_and_register(model_dir, model_name, tags)

    with gate_lock(client, model_name) as lease:
        current = champion_version(client, model_name)
        if current is not None and str(current.version) == version:  # a retried step that had promoted
            return Registration.load_tags(model_name, version, client.get_model_version(model_name, version).tags)
        chance = chance_accuracy(test.labels)
        if current is None:
            accuracy = score(challenger, test).accuracy
            promoted, verdict = gate.first(accuracy, chance)
            result = Registration(model_name, version, accuracy, promoted, version if promoted else "", None, None,
                                  verdict, test_images=len(test))
        elif seen := _may_have_seen(current, tags):
            result = Registration(model_name, version, score(challenger, test).accuracy, False, str(current.version),
                                  str(current.version), None, f"kept champion v{current.version}: not compared: {seen}",
                                  test_images=len(test))
        else:
            champion = champion_model(model_name, current)
            if champion.spec.classes != challenger.spec.classes:
                client.set_registered_model_alias(model_name, "challenger", version)
                raise TlpipeError(
                    f"the champion of '{model_name}' (version {current.version}) predicts classes "
                    f"{champion.spec.classes} and this model {challenger.spec.classes}, so they cannot be compared on "
                    f"the same test images; version {version} stays registered as challenger and the champion is "
                    "unchanged: register models of these classes under another model_name (-p model_name=...).")
            evidence = paired_comparison(challenger, champion, test)
            promoted = gate.passes(evidence)
            result = Registration(
                model_name, version, evidence.challenger_accuracy, promoted, version if promoted else str(current.version),
                str(current.version), evidence.champion_accuracy, gate.verdict(evidence, str(current.version), chance),
                evidence.p_value, evidence.challenger_only, evidence.champion_only, len(test))
        result.chance = chance
        lease.check()
        for key, value in result.tags().items():
            client.set_model_version_tag(model_name, version, key, value)
        if result.promoted:
            if current is not None:
                client.set_model_version_tag(model_name, version, PREVIOUS_CHAMPION_TAG, str(current.version))
            client.set_registered_model_alias(model_name, "champion", version)
            aliases = client.get_registered_model(model_name).aliases
            if str(aliases.get("challenger", "")) == version:  # set by an earlier attempt of this step
                client.delete_registered_model_alias(model_name, "challenger")
        else:
            client.set_registered_model_alias(model_name, "challenger", version)
    return result


def rollback(client, model_name: str, to: str = "") -> tuple[str, str]:
    """Moves `champion` to version `to`, or back to the version it replaced; returns (from, to)."""
    with gate_lock(client, model_name):
        current = champion_version(client, model_name)
        if current is None:
            raise TlpipeError(f"model '{model_name}' has no champion to roll back.")
        target = str(to or current.tags.get(PREVIOUS_CHAMPION_TAG, ""))
        if not target:
            raise TlpipeError(f"champion version {current.version} of '{model_name}' replaced no earlier champion; "
                              "nothing to roll back to (name a version with --to).")
        if target == str(current.version):
            raise TlpipeError(f"version {target} of '{model_name}' is already the champion.")
        if not _version_exists(client, model_name, target):
            why = "is not a version" if to else f"(the champion version {current.version} replaced) no longer exists"
            raise TlpipeError(f"version {target} of '{model_name}' {why}; the champion stays version {current.version}"
                              " (`tlpipe registry` lists the versions; choose one with --to).")
        client.set_registered_model_alias(model_name, "champion", target)
        client.set_model_version_tag(model_name, str(current.version), "tlpipe.rolled_back", time.strftime("%Y-%m-%dT%H:%M:%S"))
    return str(current.version), target


def _version_exists(client, model_name: str, version: str) -> bool:
    """False only when the registry says the version is not there; any other failure stops the caller in a sentence."""
    if not version.isdigit():
        return False
    try:
        client.get_model_version(model_name, version)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise unanswered(f"version {version} of '{model_name}'", error) from None
    return True


def versions(client, model_name: str) -> list[dict]:
    """Every version with its aliases, accuracy and lineage, newest first."""
    found = client.search_model_versions(f"name='{model_name}'")
    if not found:
        raise TlpipeError(f"no registered model named '{model_name}'.")
    # Search results leave out aliases; the registered model has them all.
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(model_name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in sorted(found, key=lambda v: int(v.version), reverse=True):
        tags, evidence = v.tags, gate_evidence(v.tags)
        rows.append({
            "version": str(v.version),
            "aliases": ",".join(sorted(aliases.get(str(v.version), []))) or "-",
            "accuracy": tags.get("tlpipe.accuracy", ""),
            "candidate": tags.get("tlpipe.candidate", ""),
            "method": tags.get("tlpipe.method", ""),
            "pipeline_run": tags.get(PIPELINE_RUN_TAG, ""),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(v.creation_timestamp / 1000)),
            "evidence": _evidence(evidence),
            "p": "" if evidence.get("p_value") is None else f"{float(evidence['p_value']):.6g}",
            "gate": tags.get(VERDICT_TAG, ""),
        })
    return rows


def _evidence(evidence: dict) -> str:
    """The gate's comparison in a few characters: champion, its accuracy, images only each got right."""
    if evidence.get("champion_version") is None or evidence.get("champion_accuracy") is None:
        return "-"
    return (f"vs v{evidence['champion_version']} {float(evidence['champion_accuracy']):.4f}, "
            f"+{evidence['challenger_only']}/-{evidence['champion_only']}")
