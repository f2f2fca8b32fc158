"""The job queue: a store of what was asked (SQLite in the workspace), a worker that runs it on the engine.

No training logic here: a job is an sdtune command line (``kinds``), run as a unit of work by ``sdtune.engine``;
how far it got is read from its run folder (``progress``).
"""
