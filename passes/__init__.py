"""Built-in passes (installed as `dfc.passes`); importing this package registers them."""

from dfc.passes import cleanup, finetune, fold_bn, moments, prune, quantize, requant, synthesize  # noqa: F401
