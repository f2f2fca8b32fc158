"""`sdtune serve`: a FastAPI app (REST + server-sent events) and a plain HTML/CSS/JS page, over the job queue.

It only translates: requests become jobs (``sdtune.jobs``) or reads of the workspace; no training logic here.
"""
