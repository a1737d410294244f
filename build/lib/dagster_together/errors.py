"""Every exception dagster-together raises, importable from one place::

    from dagster_together.errors import AuthenticationError, InvalidRequestFileError

The plain-Python layer (client, request builder, join) raises these; inside a Dagster run they
reach the UI as one ``dg.Failure`` whose first line is the message, with the exception below.
"""

from dagster_together.client.errors import *  # noqa: F403
from dagster_together.client.errors import __all__ as _client_errors
from dagster_together.cost import BudgetExceededError

__all__ = [*_client_errors, "BudgetExceededError"]
