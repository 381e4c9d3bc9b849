"""One comparison page of several trainings: ``python -m vae.compare EXP_OR_RUN …``.

==============  ==================================================================
``runs``        what each name means (a DVC experiment, a training run, a sweep's
                parent run) and what each training holds in MLflow
``page``        the self-contained HTML page: metrics table, curves, pictures
``command``     the command line
==============  ==================================================================
"""
