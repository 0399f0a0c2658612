"""The champion gate: the paired evidence on one test split, the rule that reads it, and the record of
the decision (a Registration) that the version's tags and the step's artifact keep."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tlpipe.data import ImageSet
from tlpipe.errors import TlpipeError
from tlpipe.models import Classifier
from tlpipe.scoring import predict


@dataclass
class PairedComparison:
    """Two fixed models on the same test images: the evidence the champion gate decides on."""

    images: int
    challenger_accuracy: float
    champion_accuracy: float
    challenger_only: int  # images the challenger classifies correctly and the champion does not
    champion_only: int  # the reverse
    p_value: float  # one-sided exact McNemar test that the challenger is better

    @property
    def gain(self) -> float:
        """The challenger's test accuracy minus the champion's, in points."""
        return 100 * (self.challenger_accuracy - self.champion_accuracy)


def mcnemar_p(challenger_only: int, champion_only: int) -> float:
    """One-sided exact McNemar test: under "equally good" each discordant image is a fair coin, so p is
    P(X >= challenger_only) for X ~ Binomial(discordant, 1/2); 1 when there is no discordant image."""
    from scipy.stats import binomtest

    n = challenger_only + champion_only
    return float(binomtest(challenger_only, n, 0.5, alternative="greater").pvalue) if n else 1.0


def paired_comparison(challenger: Classifier, champion: Classifier, test: ImageSet) -> PairedComparison:
    right_new = predict(challenger, test.images).numpy() == test.labels
    right_old = predict(champion, test.images).numpy() == test.labels
    b, c = int((right_new & ~right_old).sum()), int((right_old & ~right_new).sum())
    return PairedComparison(len(test), float(right_new.mean()), float(right_old.mean()), b, c, mcnemar_p(b, c))


@dataclass
class Gate:
    """When a challenger replaces the champion: p < alpha and a gain of at least `margin` points. No
    version below `min_accuracy` (a test accuracy from 0 to 1; 0: no floor) becomes the champion, the
    first one included."""

    alpha: float = 0.05
    margin: float = 0.0
    min_accuracy: float = 0.0

    def __post_init__(self):
        if not 0 < self.alpha <= 1:
            raise TlpipeError(f"gate_alpha must be above 0 and at most 1, got {self.alpha}.")
        if not 0 <= self.margin <= 100:
            raise TlpipeError(f"gate_margin is a gain in accuracy points, from 0 to 100; got {self.margin}.")
        if not 0 <= self.min_accuracy <= 1:
            raise TlpipeError(f"min_accuracy is a test accuracy from 0 to 1 (0: no floor), got {self.min_accuracy}.")

    def below_floor(self, accuracy: float, chance: float) -> str:
        """Why a version of this test accuracy may not be the champion ("" when it may)."""
        if accuracy >= self.min_accuracy:
            return ""
        return f"{accuracy:.2%} on the test split is below min_accuracy {self.min_accuracy:.2%} (chance {chance:.2%})"

    def first(self, accuracy: float, chance: float) -> tuple[bool, str]:
        """Whether the first version of a model becomes its champion, and the verdict."""
        if why := self.below_floor(accuracy, chance):
            return False, f"not promoted: {why}"
        return True, "promoted: the first champion"

    def shown_better(self, evidence: PairedComparison) -> bool:
        """The paired test's rule alone: significant at alpha, with at least the margin's gain."""
        return evidence.p_value < self.alpha and evidence.gain >= self.margin

    def passes(self, evidence: PairedComparison) -> bool:
        return self.shown_better(evidence) and evidence.challenger_accuracy >= self.min_accuracy

    def verdict(self, evidence: PairedComparison, champion: str, chance: float = 0.0) -> str:
        if self.shown_better(evidence) and (why := self.below_floor(evidence.challenger_accuracy, chance)):
            return f"kept champion v{champion}: better, but {why}"
        if self.passes(evidence):
            return f"promoted: better than champion v{champion} (p={evidence.p_value:.3g} < {self.alpha:g})"
        why = (f"p={evidence.p_value:.3g} >= {self.alpha:g}" if evidence.p_value >= self.alpha
               else f"gain {evidence.gain:+.2f} points < margin {self.margin:g}")
        return f"kept champion v{champion}: not shown better ({why})"


@dataclass
class Registration:
    model_name: str
    version: str
    accuracy: float  # on the target test split
    promoted: bool
    champion_version: str
    previous_champion: str | None
    previous_champion_accuracy: float | None  # on the same test images
    verdict: str = ""
    p_value: float | None = None
    challenger_only: int | None = None  # test images only the challenger gets right
    champion_only: int | None = None  # test images only the champion gets right
    test_images: int = 0
    chance: float | None = None  # the test accuracy of always answering the most frequent test class

    @property
    def alias(self) -> str:
        """The alias this version holds: a promoted version is the champion, any other the challenger."""
        return "champion" if self.promoted else "challenger"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Registration":
        return cls(**json.loads(Path(path).read_text()))

    def tags(self) -> dict[str, str]:
        """The gate's verdict, the tag a person reads first, and its evidence as one JSON tag."""
        facts = {"promoted": self.promoted, "p_value": self.p_value,
                 "challenger_accuracy": self.accuracy, "champion_accuracy": self.previous_champion_accuracy,
                 "challenger_only": self.challenger_only, "champion_only": self.champion_only,
                 "champion_version": self.previous_champion, "test_images": self.test_images,
                 "chance_accuracy": self.chance}
        return {VERDICT_TAG: self.verdict, GATE_TAG: json.dumps({k: v for k, v in facts.items() if v is not None})}

    @classmethod
    def load_tags(cls, model_name: str, version: str, tags: dict[str, str]) -> "Registration":
        """The registration a version's gate tags record (a retried register step returns it)."""
        evidence = gate_evidence(tags)
        get = lambda key, kind: kind(evidence[key]) if evidence.get(key) is not None else None  # noqa: E731
        return cls(model_name, version, get("challenger_accuracy", float), str(evidence.get("promoted")) == "True",
                   version, get("champion_version", str), get("champion_accuracy", float), get("verdict", str),
                   get("p_value", float), get("challenger_only", int), get("champion_only", int),
                   get("test_images", int) or 0, get("chance_accuracy", float))


GATE_TAG = "tlpipe.gate"  # the gate's evidence on a version: one JSON object
VERDICT_TAG = "tlpipe.gate.verdict"


def gate_evidence(tags: dict[str, str]) -> dict:
    """The gate's evidence and verdict that a version's tags record: the JSON tag, or for a version
    registered by an earlier tlpipe, one tag a fact."""
    if GATE_TAG in tags:
        return {**json.loads(tags[GATE_TAG]), "verdict": tags.get(VERDICT_TAG)}
    return {key.removeprefix(f"{GATE_TAG}."): value for key, value in tags.items() if key.startswith(f"{GATE_TAG}.")}
