"""The model zoo: published models as specs, ``create_model``/``list_models`` in timm's style."""
from archbench.models import zoo  # noqa: F401  (registers the zoo)
from archbench.models.factory import create_model, get_entry, list_models, override_spec  # noqa: F401
