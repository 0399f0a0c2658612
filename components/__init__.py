"""KFP v2 components, one per pipeline step. Each is thin: typed artifacts in and out, one call
into `tlpipe.steps`. Their bodies run in the component image (or, locally, this environment)."""

# The decorators' image; `tlpipe compile --image` builds the components for another (tlpipe.cluster).
from tlpipe.cluster import DEFAULT_IMAGE as IMAGE  # noqa: F401
