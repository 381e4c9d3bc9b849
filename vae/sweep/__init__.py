"""Sweeps over params.yaml keys on Ray Tune: ``python -m vae.sweep SWEEP.yaml``.

==============  =========================================================
``spec``        the sweep file, checked against params.yaml and dvc.yaml
``trial``       a trial, in a Ray worker: trained and evaluated as the DVC stages do
``cluster``     joining Ray: this machine's, or a cluster's at ``RAY_ADDRESS``
``tune``        the driver: the trials on Ray Tune, their table, the best one's command
``command``     the command line
==============  =========================================================
"""
