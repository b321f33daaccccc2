"""The real-time updater: per-event online features, mirrored from the SQL marts."""
