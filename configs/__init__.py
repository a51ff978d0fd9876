"""The training configs (`--config configs/<name>.py[:variant]`); installed as
asanet_jax.configs, so that the programs find them from any folder."""
