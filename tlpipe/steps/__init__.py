"""The pipeline's steps as plain functions over artifact paths: what each KFP component calls.

One module a step (ingest, pretrain, finetune, adapt, evaluate, register, champion for retraining's
starting model, layers for the layer sweep) and `common` for what they share. Each step validates its
input, tracks itself as a nested MLflow run, writes its output artifact and returns facts for the
component's artifact metadata. User mistakes raise TlpipeError. Nothing here knows KFP.
"""
