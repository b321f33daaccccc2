"""The HTTP recommendation service (``recsys serve``).

Modules: ``settings`` (ServiceSettings), ``catalogue`` (items and migrations loaded once from the
warehouse), ``profile`` (a user's online features), ``candidates`` (candidate sources),
``ann`` (numpy top-k indexes), ``ranking`` (merge, score, filter, explain), ``inbox`` (durable
event inbox drained into the warehouse) and ``app`` (FastAPI ``create_app(settings)``).

Nothing is imported here, so ``import recsys.serving.settings`` stays light.
"""
