"""Running a classifier over images: batches sized for any image size, predictions, probabilities
and accuracy (the one definition every step, the progress logger and the gate use)."""

import torch
from torch import nn

from tlpipe.data.loader import image_batches
from tlpipe.models.classifier import Classifier

# Pixels scored at once (images x height x width): 4096 images at 32 px, 83 at 224 px, so that scoring
# needs about the same memory at any image size, on a GPU or in a small CPU pod.
PIXELS_PER_BATCH = 2**22


def scoring_batches(model: nn.Module, images):
    """uint8 images (numpy, tensor or ShardedImages, N x H x W x 3) in batches on the model's device,
    sized by PIXELS_PER_BATCH; each batch is decoded and copied to the device only when it is scored."""
    device = next(model.parameters()).device
    size = max(1, PIXELS_PER_BATCH // (images.shape[1] * images.shape[2]))
    for batch in image_batches(images, size):
        yield batch.to(device, non_blocking=True)


@torch.inference_mode()
def predict(model: Classifier, images, among: list[int] | None = None, head: nn.Module | None = None) -> torch.Tensor:
    """Class ids for uint8 images (numpy or tensor, N x H x W x 3), in evaluation mode, on the model's
    device; `among` restricts the choice to those classes, `head` scores with another task head of the model."""
    model.eval()
    head = head or model.head
    among_ids = torch.as_tensor(among, device=next(model.parameters()).device) if among is not None else None
    out = []
    for batch in scoring_batches(model, images):
        scores = head(model.features(batch))
        ids = scores.argmax(1) if among_ids is None else among_ids[scores[:, among_ids].argmax(1)]
        out.append(ids.cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


@torch.inference_mode()
def probabilities(model: Classifier, images) -> torch.Tensor:
    """Class probabilities (softmax of the main head) for uint8 images, N x H x W x 3, on the CPU."""
    model.eval()
    out = [torch.softmax(model(batch).float(), 1).cpu() for batch in scoring_batches(model, images)]
    return torch.cat(out) if out else torch.empty(0, len(model.spec.classes))


def accuracy(model: Classifier, data, head: nn.Module | None = None) -> float:
    """The fraction of labelled `data` (an ImageSet) that `model` classifies right (`head`: another task
    head of a multi-task model)."""
    return float((predict(model, data.images, head=head).numpy() == data.labels).mean())
