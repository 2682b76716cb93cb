"""The event backbone shared by every service (DESIGN.md §3).

Modules: ``schemas`` (events and registry), ``envelope``, ``publisher``, ``outbox`` (transactional
outbox and relay), ``consumer`` (the runner), ``projection`` (idempotency and projections),
``tail`` (fan-out), ``replay`` (replay and rebuild), ``retention``, ``stats``, ``migrate``,
``settings``, ``tracing`` and ``service`` (the runtime every service shares). Import from the
modules themselves; this package keeps no re-exports so each import names its layer.
"""
