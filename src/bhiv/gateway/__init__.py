"""The API gateway: one entry point in front of every BHIV service.

Routes ``/api/<prefix>/...`` to the service owning the prefix, authenticates at
the edge, rate-limits, balances load over healthy instances, retries safely,
and describes the live platform (``/services``, an aggregated ``/openapi.json``).
"""
