"""Domain-adversarial training (DANN; Ganin & Lempitsky 2015, Ganin et al. 2016).

The feature extractor learns to classify labelled source images while a domain discriminator,
fed through a gradient reversal layer, tries to tell source from target features; the reversed
gradient pushes the features towards being domain-invariant. The reversal coefficient follows
lambda_p = 2 / (1 + exp(-10 p)) - 1 and the learning rate mu0 / (1 + 10 p)^0.75 (tlpipe.train).
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from tlpipe.data import ImageSet
from tlpipe.errors import TlpipeError
from tlpipe.models import Classifier
from tlpipe.train import Batches, LogFn, TrainConfig, device, fit, prepare, seed_everything, sgd


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by -coeff on the way back."""
    return _ReverseGradient.apply(x, coeff)


def ganin_lambda(p: float) -> float:
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


class DomainDiscriminator(nn.Module):
    """Source-vs-target classifier on features; outputs one logit (source = 1)."""

    def __init__(self, feature_dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)


class _Dann(nn.Module):
    """Classifier and discriminator as one module, so that data-parallel training sees one forward."""

    def __init__(self, model: Classifier, discriminator: DomainDiscriminator):
        super().__init__()
        self.model, self.discriminator = model, discriminator

    def forward(self, source_images, target_images, coeff: float):
        # Separate passes: batch norm normalises each domain by its own batch statistics, which
        # removes the colour and contrast gap before the discriminator looks. On the small digit
        # domains this is what lets DANN beat source-only (benchmarks/ has the figures).
        source_features = self.model.features(source_images)
        target_features = self.model.features(target_images)
        features = torch.cat([source_features, target_features])
        return self.model.head(source_features), self.discriminator(reverse_gradient(features, coeff))


def adapt(
    source_model: Classifier,
    source: ImageSet,
    target: ImageSet,
    config: TrainConfig,
    log: LogFn | None = None,
) -> Classifier:
    """DANN from `source_model` on labelled `source` and unlabelled `target` images."""
    if not source.is_labelled:
        raise TlpipeError("DANN needs labelled source images.")
    if len(target) == 0:
        raise TlpipeError("DANN needs unlabelled target images; the unlabelled target split is empty.")
    generator = seed_everything(config.seed)
    dev = device()
    model = copy.deepcopy(source_model).train()
    discriminator = DomainDiscriminator(model.feature_dim).train()
    net = prepare(_Dann(model, discriminator), config)
    source_batches = Batches(
        torch.from_numpy(source.images).to(dev),
        torch.from_numpy(source.labels).to(dev),
        batch_size=config.batch_size,
        generator=generator,
    )
    target_batches = Batches(torch.from_numpy(target.images).to(dev), batch_size=config.batch_size, generator=generator)
    optimizer = sgd([{"params": model.parameters()}, {"params": discriminator.parameters()}], config)

    def step(p: float):
        source_images, labels = next(source_batches)
        (target_images,) = next(target_batches)
        n = len(source_images)
        class_logits, domain_logits = net(source_images, target_images, ganin_lambda(p))
        classification = F.cross_entropy(class_logits, labels)
        domain_labels = torch.cat([torch.ones(n, device=dev), torch.zeros(len(target_images), device=dev)])
        domain = F.binary_cross_entropy_with_logits(domain_logits.float(), domain_labels)
        domain_accuracy = ((domain_logits > 0).float() == domain_labels).float().mean()
        metrics = {"loss": classification, "domain_loss": domain, "domain_accuracy": domain_accuracy}
        return classification + domain, metrics

    steps_per_epoch = max(source_batches.per_epoch, target_batches.per_epoch)
    fit(step, optimizer, config.epochs, steps_per_epoch, log, config.checkpoint_dir, config.checkpoint_every,
        state={"model": model, "discriminator": discriminator, "source": source_batches, "target": target_batches},
        images_per_step=source_batches.batch_size + target_batches.batch_size)
    return model.eval()
