"""The Prefect flows in a checkout. The flows themselves are :mod:`cropmap.flows`, in the installed package, which
is what deployments, Dask workers and the image import. ``python -m flows.map_country DEMO`` (``train_model``,
``transfer``) is the ``cropmap`` command with ``--prefect`` (``cropmap transfer``): one command line per job,
whichever way it is typed."""
