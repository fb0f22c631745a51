"""OCPP-J 1.6 for both roles: frames, CallErrors, strict schema validation and the RPC pump."""
