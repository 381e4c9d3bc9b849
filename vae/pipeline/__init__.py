"""The DVC pipeline's work, one module per stage; ``stages/<stage>.py`` only calls ``main``.

==============  =========================================================
``prepare``     Fashion-MNIST → padded uint8 tensors (``data/prepared``)
``train``       the resumable, MLflow-tracked training run
``classifier``  the feature network of the sample-quality metric
``evaluate``    test-set metrics and figures, in a run nested under training
``generate``    samples, latent grid, interpolation, likewise
``runner``      the JSON and CSV result files
``resume``      the per-epoch training checkpoint
``dvc_yaml``    what dvc.yaml declares for each stage
``paths``       where the stages read and write
==============  =========================================================

MLflow is :mod:`vae.tracking`'s, Ray Tune :mod:`vae.sweep`'s; the model and its
arithmetic are the library's (:mod:`vae`).
"""
