"""Training, evaluation and prediction for the FCN models: `fcn-fast train / eval /
predict / make-synthetic` (see fcn_fast.train.cli), and their pieces as a library:

    data       VOC / SBD datasets, split lists, augmentation, deterministic sampler
    synthetic  the procedurally drawn dataset of make-synthetic
    metrics    the four FCN metrics from one confusion matrix
    recipes    heavy / paper / modern presets and the configuration of a run
    loop       Trainer, train(), evaluate(), profile_overhead()
    checkpoint atomic, resumable checkpoints

Nothing here is imported by `import fcn_fast`.
"""
