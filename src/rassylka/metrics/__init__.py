"""Prometheus metrics of this process: what they are (``definitions``), the ``/metrics`` route
(``router``) and the standalone worker's own small server (``server``)."""
