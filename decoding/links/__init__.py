"""Links of a decoding chain, one module per family: ``base`` (the protocol),
``filters`` (temperature and truncation), ``bans`` (bias and masks),
``penalties`` (repetition, presence/frequency, DRY)."""
