"""LightningCLI configs, installed as ``ssd_mnv1.lightning_configs`` so ``python -m ssd_mnv1.fit``
finds the quickstart without the source tree."""
