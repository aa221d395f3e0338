"""The pipeline that knows nothing about racing: stream in, rows out, acks back.

Nothing in this package imports ``processor.domain``; race logic plugs in through the
``BatchObserver`` protocol (``processor.core.observer``) that the tree assembly wires.
"""
