"""Runnable trainables: a PyTorch ConvNet, scikit-learn and XGBoost, all on the bundled digits.

Each module defines a trainable ``f(config)`` that calls :func:`tuning.report` once per unit of
resource (epoch, estimator increment, boosting round) and resumes from
:func:`tuning.get_checkpoint`; running a module as a script starts a small tuning run.
"""
