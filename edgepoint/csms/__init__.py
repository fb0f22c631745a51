"""Embedded OCPP 1.6J central system (mini-CSMS) for the site's charge points."""
