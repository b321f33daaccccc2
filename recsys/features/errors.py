"""The feature store's errors; each message says what to run."""


class FeatureStoreError(Exception):
    """A feature-store operation cannot proceed; the message says what to run."""


class NotMaterialized(FeatureStoreError):
    """The online store has not been filled for this home yet."""


class UnknownUser(FeatureStoreError):
    """The online store has no features for this user."""


class MaterializationError(FeatureStoreError):
    """Materialisation wrote nothing, or not what the exports hold."""
