"""The ``fleet`` launcher: runs the whole platform in one process and inspects its streams.

It composes the services (DESIGN.md §7) but is not one of them: services and libs never import it.
"""
