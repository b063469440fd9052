"""Serving: an HTTP explanation endpoint with dynamic batching (LitServe), the explainer's card and a page.

``fex-serve checkpoint=...`` (conf/serve.yaml); see :mod:`fex.serve.server` for the routes.
Needs the ``serve`` extra: ``pip install 'fex[serve]'``.
"""
