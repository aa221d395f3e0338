"""Rally simulator: contract records from N trackers driving real and synthetic routes.

A load generator and a source of realistic awkward data for the processor: realistic
speeds and Teltonika IO bags (8-byte values, NX buffers), no-fix records, coverage gaps
uploaded late and out of order, and a chosen share of poison records.

Layout, one concern per module: ``geo`` (sphere maths), ``routes`` (GPX and synthetic
loops), ``motion`` (speed profile), ``devices`` (identity, IO bag), ``tracker`` (one
device's timeline), ``poison`` (broken records), ``generator`` (the pure, seeded record
iterator), ``publisher`` (pacing, XADD, summary), ``race`` (the matching event, entries,
stages and geofences in the Directus tables, for ``--create-race``), ``command`` (CLI).
"""
