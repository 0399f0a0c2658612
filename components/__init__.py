"""KFP v2 components, one per pipeline step. Each is thin: typed artifacts in and out, one call
into `tlpipe.steps`. Their bodies run in the component image (or, locally, this environment)."""

import os

# The image every component runs in on a cluster; tlpipe and its pinned dependencies are installed there.
IMAGE = os.environ.get("TLPIPE_IMAGE", "ghcr.io/tlpipe/tlpipe-trainer:0.1.0")
