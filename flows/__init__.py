"""Entry points of the Prefect flows in a checkout (``python -m flows.transfer``, ...). The flows themselves
are :mod:`cropmap.flows`, in the installed package, which is what deployments, Dask workers and the image
import; nothing here is needed outside a checkout."""
