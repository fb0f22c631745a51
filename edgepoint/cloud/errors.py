"""The two ways a cloud call fails, which decide how it is retried."""

from __future__ import annotations

from edgepoint.errors import EdgepointError


class CloudError(EdgepointError):
    """A call to Firebase or the ledger endpoint failed."""


class CloudFault(CloudError):
    """Bad credentials, rules that refuse the write, a wrong URL, a conflicting ledger.

    Retrying soon cannot help: it is shown in `status` as a fault and tried again only
    every few minutes (someone may fix the rules in the console), never in a storm.
    """


class CloudUnavailable(CloudError):
    """Network down, timeout, server error: retried with jittered exponential back-off."""
