"""The race domain: IO mapping, race definition, geofence timing.

Plugs into the core only through ``processor.plugins`` (an Enricher and a CommitObserver);
the core never imports this package. Pure modules (``io_mapping``, ``geofence``,
``timing``, ``live``) hold the rules and are tested without I/O; ``store`` is the one
place that talks to PostgreSQL and ``plugin`` wires them into the running app.
"""
