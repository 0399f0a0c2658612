"""tlpipe's container images (images/*/Dockerfile): building them (`build`), the engine that builds and
runs them, Docker or buildah (`engine`), and running the pipeline's steps inside them as their pods
would (`steps`). Used by scripts/build-images; nothing in a pipeline step imports it."""
