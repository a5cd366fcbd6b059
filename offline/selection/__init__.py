"""Choosing a generator's settings on RETIRED ads only: rolling-origin pseudo-cold folds,
importance weights toward the cold ads' content (covariate shift), weighted metrics, and the
selection itself. No active-ad label is read anywhere in this package."""
