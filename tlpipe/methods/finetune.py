"""Fine-tuning a source model on few labelled target images.

Strategies:
- `full`: every layer trains; transferred blocks at `config.backbone_lr` times the head's rate (train.transfer_groups).
- `freeze:<k>`: layer transfer: the first k blocks are copied and frozen (weights and batch-norm
  statistics), the rest train.
- `linear-probe`: the whole backbone is a frozen feature extractor; only the head trains.
- `l2sp:<alpha>`: full fine-tuning with alpha/2 * ||w - w_source||^2 on the backbone in place of
  weight decay (Li et al. 2018), which keeps the model near the source.
- `copy:<k>` / `copy+:<k>`: Yosinski et al. (2014)'s AnB / AnB+: the first k blocks are copied from the
  source model, the other blocks and the head start fresh; copy keeps the copied blocks frozen,
  copy+ fine-tunes them with the rest (all at the base rate). k = 0 is target-only.
- `scratch`: no transfer from the source: a fresh model of the same architecture, from the same
  pretrained weights as the source model when it had some (the target-only baseline).
- `progressive`: a progressive network over the frozen source model (tlpipe.methods.progressive).
- `multitask[:<w>]`: source and target trained jointly, shared trunk, a head each; w weighs the
  source task's loss (default 1) (tlpipe.methods.multitask).
- `zero-shot:attributes` / `zero-shot:embedding`: classes described by attributes, trained on the
  seen classes of source and labelled target (tlpipe.methods.zeroshot).
"""

import copy
from dataclasses import dataclass
from typing import Callable

import torch

from tlpipe.data import ImageSet
from tlpipe.errors import TlpipeError, did_you_mean
from tlpipe.methods.multitask import multitask
from tlpipe.methods.progressive import progressive
from tlpipe.methods.supervised import train_classifier
from tlpipe.methods.zeroshot import zero_shot
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig, transfer_groups


@dataclass(frozen=True)
class Strategy:
    """A fine-tuning strategy's name as written, how its argument is read, and what it trains on."""

    form: str  # as a user writes it, e.g. freeze:<k>
    argument: Callable[[str], float | int | str] | None = None  # reads the text after ':'; None: takes none
    default: float | int | str = 0.0  # the value without an argument (for an optional one)
    optional: bool = False  # the argument may be left out
    uses_source: bool = False  # also trains on the labelled source images


def _count(text: str) -> int:
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


def _non_negative(text: str) -> float:
    if float(text) < 0:
        raise ValueError(text)
    return float(text)


def _zero_shot_kind(text: str) -> str:
    if text not in ("attributes", "embedding"):
        raise ValueError(text)
    return text


STRATEGY_TABLE = {
    "full": Strategy("full"),
    "freeze": Strategy("freeze:<k>", _count),
    "linear-probe": Strategy("linear-probe"),
    "l2sp": Strategy("l2sp:<alpha>", _non_negative),
    "copy": Strategy("copy:<k>", _count),
    "copy+": Strategy("copy+:<k>", _count),
    "scratch": Strategy("scratch"),
    "progressive": Strategy("progressive"),
    "multitask": Strategy("multitask[:<w>]", _non_negative, default=1.0, optional=True, uses_source=True),
    "zero-shot": Strategy("zero-shot:attributes or zero-shot:embedding", _zero_shot_kind, uses_source=True),
}
STRATEGIES = ", ".join(s.form for s in STRATEGY_TABLE.values())


def parse_strategy(strategy: str) -> tuple[str, float | str]:
    """(name, argument) of a strategy as written, e.g. ("freeze", 2) for freeze:2."""
    name, colon, arg = strategy.partition(":")
    known = STRATEGY_TABLE.get(name)
    try:
        if known is not None and known.argument is None and not colon:
            return name, known.default
        if known is not None and known.argument is not None and (colon or known.optional):
            return name, known.argument(arg) if colon else known.default
    except ValueError:
        pass
    raise TlpipeError(f"unknown fine-tuning strategy '{strategy}';{'' if known else did_you_mean(name, STRATEGY_TABLE)} use "
                      f"{STRATEGIES}.")


def uses_source(strategy: str) -> bool:
    """Whether a strategy also trains on the source images: only then does its step read source_train."""
    return STRATEGY_TABLE[parse_strategy(strategy)[0]].uses_source


def freeze_blocks(model: Classifier, k: int) -> None:
    """Puts the first k blocks out of training: no gradients, batch-norm statistics fixed."""
    model.train()
    for block in model.blocks[:k]:
        block.eval()
        block.requires_grad_(False)


def l2sp_penalty(model: Classifier, source: dict[str, torch.Tensor], alpha: float):
    """alpha/2 * sum ||w - w_source||^2 over the backbone's parameters."""
    pairs = [(p, source[name]) for name, p in model.blocks.named_parameters()]

    def penalty() -> torch.Tensor:
        if pairs and pairs[0][1].device != pairs[0][0].device:  # the model moved to the training device
            pairs[:] = [(p, p0.to(p.device)) for p, p0 in pairs]
        return 0.5 * alpha * sum(((p - p0) ** 2).sum() for p, p0 in pairs)

    return penalty


def finetune(
    source_model: Classifier,
    labelled: ImageSet,
    strategy: str,
    config: TrainConfig,
    log: LogFn | None = None,
    source: ImageSet | None = None,
    attributes: dict[str, list[float]] | None = None,
    initial_weights: dict | None = None,
    initial_source: str = "",
) -> Classifier:
    """`source` (the labelled source training images) is needed by multitask and zero-shot, and
    `attributes` ({class: signature}) by zero-shot. `initial_weights` (pretrained backbone weights, read
    from `initial_source`) are where scratch starts."""
    name, arg = parse_strategy(strategy)
    if name == "progressive":
        return progressive(source_model, labelled, config, log)
    if name in ("multitask", "zero-shot") and source is None:
        raise TlpipeError(f"strategy {strategy} needs the source training images.")
    if name == "multitask":
        return multitask(source_model, source, labelled, arg, config, log)
    if name == "zero-shot":
        both = source.concatenate(labelled) if len(labelled) else source
        return zero_shot(source_model, both, arg, attributes or {}, config, log)
    if not labelled.is_labelled:
        raise TlpipeError("fine-tuning needs labelled target images; set target_labels_per_class to 1 or more.")
    if name in ("scratch", "copy", "copy+"):
        k = int(arg) if name != "scratch" else 0
        if k > len(source_model.blocks):
            raise TlpipeError(f"strategy {strategy} asks for more blocks than the backbone has ({len(source_model.blocks)}).")
        torch.manual_seed(config.seed)
        model = Classifier(copy.deepcopy(source_model.spec), initial_weights if name == "scratch" else None, initial_source)
        for fresh, learned in zip(model.blocks[:k], source_model.blocks[:k]):
            fresh.load_state_dict(learned.state_dict())
        freeze_blocks(model, k if name == "copy" else 0)
        train_classifier(model, labelled, config, param_groups=[p for p in model.parameters() if p.requires_grad], log=log)
        return model

    model = copy.deepcopy(source_model)
    n_blocks = len(model.blocks)
    frozen = {"freeze": int(arg), "linear-probe": n_blocks}.get(name, 0)
    if frozen > n_blocks:
        raise TlpipeError(f"strategy freeze:{frozen} asks for more blocks than the backbone has ({n_blocks}).")
    freeze_blocks(model, frozen)
    penalty = None
    if name == "l2sp":  # the penalty toward the source weights takes weight decay's place on the backbone
        source_weights = {k: v.detach().clone() for k, v in model.blocks.named_parameters()}
        penalty = l2sp_penalty(model, source_weights, arg)
    groups = transfer_groups(model.blocks.parameters(), model.head_parameters(), config,
                             **({"weight_decay": 0.0} if name == "l2sp" else {}))
    train_classifier(model, labelled, config, param_groups=groups, penalty=penalty, log=log)
    return model
