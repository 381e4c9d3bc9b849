"""The DVC pipeline's work, one module per stage; ``stages/<stage>.py`` only calls ``main``.

==============  =========================================================
``prepare``     Fashion-MNIST → padded uint8 tensors (``data/prepared``)
``train``       the resumable, MLflow-tracked training run
``classifier``  the feature network of the sample-quality metric
``evaluate``    test-set metrics and figures, in a run nested under training
``generate``    samples, latent grid, interpolation, likewise
``sweep``       Ray Tune trials and their driver (``python -m vae.sweep``)
``sweep_spec``  a sweep file, checked against params.yaml
``registry``    registered models, ranking, the champion alias
``runner``      one-line errors, JSON/CSV result files
``tracking``    the MLflow store, runs and the logged model
``resume``      the per-epoch training checkpoint
``dvc_yaml``    what dvc.yaml declares for each stage
``paths``       where the stages read and write
==============  =========================================================
"""
