"""Where a snapshot comes from: the Kaleyra client, reading its answers, a saved answer.

Nothing here touches the database; a source hands :class:`regionsync.records.Snapshot`
to the sync.
"""
