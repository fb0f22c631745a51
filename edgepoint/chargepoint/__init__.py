"""OCPP 1.6J charge point: the link to the CSMS, message builders and the outbox sender."""
