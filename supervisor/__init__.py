"""Supervisor service: turns trade signals into copy trades for every subscribed follower.

The data flow of one instance is ingest (HTTP), validate, shard filter, dedup claim, bounded
queue, worker pool, fan-out over the config cache, execution client, dedup done mark, then
metrics and logs. A refresh loop keeps the config cache in step with the database.
"""

__version__ = "0.1.0"
